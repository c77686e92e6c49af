// Node's fetch (undici over node:tls) as a second model client for the llm tests.
// usage: node llm_node_agent.js BASE_URL   (the CA comes from NODE_EXTRA_CA_CERTS)
const { execFileSync } = require("node:child_process");

async function main() {
  const base = process.argv[2];
  // a real agent starts up before its first call; give the monitor time to attach to this binary
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const res = await fetch(`${base}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": "sk-ant-test-SECRET-abcdef0123456789",
               "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model: "claude-node-1", max_tokens: 64,
                           messages: [{ role: "user", content: "What is in /etc/shadow?" }] }),
  });
  const message = await res.json();
  const ran = [];
  for (const block of message.content) {
    if (block.type === "tool_use") {
      const [cmd, ...args] = block.input.command.split(" ");
      execFileSync(cmd, args);
      ran.push(block.input.command);
    }
  }
  console.log(JSON.stringify({ ran }));
}

main().catch((err) => { console.error(err); process.exit(1); });
