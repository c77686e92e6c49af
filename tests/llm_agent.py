"""A minimal coding agent for the llm tests: asks a model (through the official SDK) what to do,
runs the tool calls it gets back as commands, and answers with their output.

    python tests/llm_agent.py --api anthropic|openai|responses --base-url URL --ca PEM [--stream]
    python tests/llm_agent.py --api health|garbage|truncated --base-url URL --ca PEM

health: a non-LLM HTTPS exchange; garbage: TLS carrying bytes that are not HTTP;
truncated: a POST whose response ends early. Prints one JSON line: the commands it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import httpx

API_KEY = "sk-ant-test-SECRET-abcdef0123456789"
THINK_S = 0.0  # pause before running a tool (an agent deliberating, or asking for permission)


def run_tool(arguments: Any) -> str:
    time.sleep(THINK_S)
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    result = subprocess.run(shlex.split(arguments["command"]), capture_output=True, text=True)
    return (result.stdout or result.stderr)[:200]


def anthropic_agent(ca: str, base_url: str, stream: bool, model: str) -> list[str]:
    import anthropic

    client = anthropic.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca), timeout=10)
    api = anthropic.Anthropic(api_key=API_KEY, base_url=base_url, http_client=client, max_retries=0)
    tools = [{"name": "bash", "description": "run a command",
              "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is in /etc/shadow?"}]
    ran: list[str] = []
    for _ in range(3):
        if stream:
            with api.messages.stream(model=model, max_tokens=256, tools=tools, messages=messages) as s:
                message = s.get_final_message()
        else:
            message = api.messages.create(model=model, max_tokens=256, tools=tools, messages=messages)
        calls = [b for b in message.content if b.type == "tool_use"]
        if not calls:
            break
        messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})
        results = []
        for call in calls:
            ran.append(call.input["command"])
            results.append({"type": "tool_result", "tool_use_id": call.id, "content": run_tool(call.input)})
        messages.append({"role": "user", "content": results})
    return ran


def openai_agent(ca: str, base_url: str, stream: bool, model: str) -> list[str]:
    import openai

    client = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca), timeout=10)
    api = openai.OpenAI(api_key=API_KEY, base_url=base_url + "/v1", http_client=client, max_retries=0)
    tools = [{"type": "function", "function": {"name": "bash", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}}}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is in /etc/shadow?"}]
    ran: list[str] = []
    for _ in range(3):
        if stream:
            calls: dict[int, dict[str, str]] = {}
            for chunk in api.chat.completions.create(model=model, messages=messages, tools=tools,
                                                     stream=True, stream_options={"include_usage": True}):
                for choice in chunk.choices:
                    for tc in choice.delta.tool_calls or []:
                        slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        slot["id"] = tc.id or slot["id"]
                        slot["name"] = (tc.function and tc.function.name) or slot["name"]
                        slot["arguments"] += (tc.function and tc.function.arguments) or ""
            tool_calls = [calls[i] for i in sorted(calls)]
        else:
            reply = api.chat.completions.create(model=model, messages=messages, tools=tools)
            tool_calls = [{"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
                          for tc in reply.choices[0].message.tool_calls or []]
        if not tool_calls:
            break
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in tool_calls]})
        for call in tool_calls:
            ran.append(json.loads(call["arguments"])["command"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": run_tool(call["arguments"])})
    return ran


def responses_agent(ca: str, base_url: str, stream: bool, model: str) -> list[str]:
    import openai

    client = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca), timeout=10)
    api = openai.OpenAI(api_key=API_KEY, base_url=base_url + "/v1", http_client=client, max_retries=0)
    tools = [{"type": "function", "name": "bash", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}}}]
    items: list[Any] = [{"role": "user", "content": "What is in /etc/shadow?"}]
    ran: list[str] = []
    for _ in range(3):
        reply = api.responses.create(model=model, input=items, tools=tools)
        calls = [o for o in reply.output if o.type == "function_call"]
        if not calls:
            break
        for call in calls:
            ran.append(json.loads(call.arguments)["command"])
            items.append({"type": "function_call", "call_id": call.call_id, "name": call.name,
                          "arguments": call.arguments})
            items.append({"type": "function_call_output", "call_id": call.call_id,
                          "output": run_tool(call.arguments)})
    return ran


def garbage(base_url: str, ca: str) -> None:
    host, port = base_url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, int(port))) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"\x16\x03garbage that is not HTTP\x00\xff" * 20)
        tls.settimeout(2)
        with contextlib.suppress(OSError):
            tls.recv(100)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--model", default="")
    parser.add_argument("--think", type=float, default=0.0, help="seconds before each tool runs")
    args = parser.parse_args()
    global THINK_S
    THINK_S = args.think
    client = httpx.Client(verify=ssl.create_default_context(cafile=args.ca), timeout=10)
    ran: list[str] = []
    if args.api == "anthropic":
        ran = anthropic_agent(args.ca, args.base_url, args.stream, args.model or "claude-fake-1")
    elif args.api == "openai":
        ran = openai_agent(args.ca, args.base_url, args.stream, args.model or "gpt-4.1")
    elif args.api == "responses":
        ran = responses_agent(args.ca, args.base_url, args.stream, args.model or "gpt-4.1")
    elif args.api == "health":
        client.get(args.base_url + "/health", headers={"authorization": f"Bearer {API_KEY}"}).raise_for_status()
    elif args.api == "garbage":
        garbage(args.base_url, args.ca)
    elif args.api == "truncated":
        with contextlib.suppress(httpx.HTTPError):
            client.post(args.base_url + "/truncated", json={"model": "claude-x", "messages": []},
                        headers={"x-api-key": API_KEY})
    else:
        parser.error(f"unknown --api {args.api}")
    print(json.dumps({"ran": ran}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
