"""gVisor sandboxes as an event source (placeholder docstring, completed with the runner)."""
