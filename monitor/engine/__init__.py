"""The engine: one configuration (config), the assembly that builds a running monitor from it
(assemble), the judging loop (loop) and pipeline, and what drives them: a sandboxed command (run),
the daemon (daemon, resident), a journal re-judged (replay)."""
