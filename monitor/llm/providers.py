"""Model-API recognition: Anthropic Messages, OpenAI Chat Completions and OpenAI Responses, by the
shape of the JSON (on any host: a local vLLM speaking OpenAI's format is recognised as "openai").

`parse_request` and `parse_response` turn HTTP bodies into the `event.llm` map (before capture
mode and redaction, which `monitor.llm.redact` applies). Neither raises on bad input: what is not
a model call returns None.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ANTHROPIC, OPENAI = "anthropic", "openai"
API_MESSAGES, API_CHAT, API_RESPONSES = "messages", "chat.completions", "responses"

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"]{1,200})"')


@dataclass(slots=True)
class RequestInfo:
    """What the response parser needs to know about the request it answers."""
    provider: str
    api: str
    model: str
    stream: bool
    llm: dict[str, Any] = field(default_factory=dict)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _path(target: str) -> str:
    return target.split("?", 1)[0]


def classify_request(path: str, headers: dict[str, str], obj: dict[str, Any]) -> tuple[str, str] | None:
    """(provider, api) for a request body that looks like a model call, else None."""
    if not isinstance(obj.get("model"), str):
        return None
    messages = obj.get("messages")
    if path.endswith("/responses") or ("input" in obj and messages is None):
        return OPENAI, API_RESPONSES
    if not isinstance(messages, list):
        return None
    if path.endswith("/chat/completions"):
        return OPENAI, API_CHAT
    if path.endswith("/messages") or "anthropic-version" in headers:
        return ANTHROPIC, API_MESSAGES
    roles = {m.get("role") for m in messages if isinstance(m, dict)}
    if roles & {"system", "tool", "developer", "function"}:
        return OPENAI, API_CHAT
    if "max_tokens" in obj and ("system" in obj or _has_block(messages, ("tool_result", "tool_use"))):
        return ANTHROPIC, API_MESSAGES
    return OPENAI, API_CHAT


def _has_block(messages: list[Any], types: tuple[str, ...]) -> bool:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") in types
                                             for b in content):
            return True
    return False


def _text_of(content: Any) -> str:
    """Plain text of a message content: a string, or a list of text blocks / parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif "content" in block:  # tool_result blocks nest their content
                    parts.append(_text_of(block["content"]))
        return "\n".join(p for p in parts if p)
    return ""


def _last_message(api: str, obj: dict[str, Any]) -> dict[str, Any] | None:
    if api == API_RESPONSES:
        items = obj.get("input")
        if isinstance(items, str):
            return {"role": "user", "type": "text", "text": items}
        if not isinstance(items, list) or not items or not isinstance(items[-1], dict):
            return None
        item = items[-1]
        if item.get("type") == "function_call_output":
            return {"role": "tool", "type": "tool_result", "tool_call_id": str(item.get("call_id", "")),
                    "text": _text_of(item.get("output"))}
        return {"role": str(item.get("role", "user")), "type": "text", "text": _text_of(item.get("content"))}
    messages = obj.get("messages") or []
    if not messages or not isinstance(messages[-1], dict):
        return None
    msg = messages[-1]
    role = str(msg.get("role", ""))
    content = msg.get("content")
    if api == API_CHAT and role == "tool":
        return {"role": role, "type": "tool_result", "tool_call_id": str(msg.get("tool_call_id", "")),
                "text": _text_of(content)}
    if isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            return {"role": role, "type": "tool_result",
                    "tool_call_id": str(results[-1].get("tool_use_id", "")),
                    "text": _text_of(results[-1].get("content"))}
    return {"role": role, "type": "text", "text": _text_of(content)}


def parse_request(target: str, headers: dict[str, str], body: bytes,
                  truncated: bool = False) -> RequestInfo | None:
    """A model call's request, or None. A truncated body still yields the model when it was
    captured (the bytes up to it)."""
    path = _path(target)
    obj = _loads(body)
    if not isinstance(obj, dict):
        if not truncated:
            return None
        match = _MODEL_RE.search(body)
        if match is None:
            return None
        model = match.group(1).decode("utf-8", "replace")
        provider = ANTHROPIC if path.endswith("/messages") else OPENAI
        api = API_MESSAGES if provider == ANTHROPIC else (
            API_RESPONSES if path.endswith("/responses") else API_CHAT)
        llm = {"provider": provider, "host": headers.get("host", ""), "path": path, "model": model,
               "truncated": True}
        return RequestInfo(provider, api, model, b'"stream":true' in body.replace(b" ", b""), llm)
    kind = classify_request(path, headers, obj)
    if kind is None:
        return None
    provider, api = kind
    model = obj["model"]
    stream = obj.get("stream") is True
    if api == API_RESPONSES:
        items = obj.get("input")
        count = len(items) if isinstance(items, list) else 1
    else:
        count = len(obj.get("messages") or [])
    llm: dict[str, Any] = {"provider": provider, "host": headers.get("host", ""), "path": path,
                           "model": model, "message_count": count, "stream": stream}
    last = _last_message(api, obj)
    if last is not None:
        llm["last_message"] = last
    tools = obj.get("tools")
    if isinstance(tools, list):
        llm["tools"] = [_tool_name(t) for t in tools if _tool_name(t)]
    return RequestInfo(provider, api, model, stream, llm)


def _tool_name(tool: Any) -> str:
    if not isinstance(tool, dict):
        return ""
    fn = tool.get("function")
    if isinstance(fn, dict):
        return str(fn.get("name", ""))
    return str(tool.get("name", "") or tool.get("type", ""))


def _arguments(raw: Any) -> Any:
    """Tool-call arguments as the JSON object the model produced (OpenAI sends a JSON string)."""
    if isinstance(raw, str):
        parsed = _loads(raw.encode())
        return parsed if parsed is not None else raw
    return raw if raw is not None else {}


def _tool_call(call_id: Any, name: Any, raw_args: Any) -> dict[str, Any]:
    args = _arguments(raw_args)
    return {"id": str(call_id or ""), "name": str(name or ""), "arguments": args,
            "arguments_json": args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))}


def sse_events(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each server-sent event in a complete stream."""
    out: list[tuple[str, str]] = []
    name, data = "", []
    for raw_line in body.decode("utf-8", "replace").splitlines() + [""]:
        line = raw_line.rstrip("\r")
        if not line:
            if data:
                out.append((name, "\n".join(data)))
            name, data = "", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return out


def _usage(usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    inp = usage.get("input_tokens", usage.get("prompt_tokens"))
    out = usage.get("output_tokens", usage.get("completion_tokens"))
    result = {}
    if isinstance(inp, int):
        result["input_tokens"] = inp
    if isinstance(out, int):
        result["output_tokens"] = out
    return result or None


def _anthropic_message(msg: dict[str, Any]) -> dict[str, Any]:
    texts, calls = [], []
    for block in msg.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") in ("tool_use", "server_tool_use"):
            calls.append(_tool_call(block.get("id"), block.get("name"), block.get("input")))
    return {"id": msg.get("id"), "model": msg.get("model"), "stop_reason": msg.get("stop_reason"),
            "usage": _usage(msg.get("usage")), "text": "".join(texts), "tool_calls": calls}


def _anthropic_stream(events: list[tuple[str, str]]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    usage: dict[str, Any] = {}
    for _name, data in events:
        ev = _loads(data.encode())
        if not isinstance(ev, dict):
            continue
        kind = ev.get("type")
        if kind == "message_start" and isinstance(ev.get("message"), dict):
            message = dict(ev["message"])
            usage.update(message.get("usage") or {})
        elif kind == "content_block_start" and isinstance(ev.get("content_block"), dict):
            blocks[int(ev.get("index", len(blocks)))] = dict(ev["content_block"])
        elif kind == "content_block_delta" and isinstance(ev.get("delta"), dict):
            index, delta = int(ev.get("index", 0)), ev["delta"]
            block = blocks.setdefault(index, {"type": "text", "text": ""})
            if delta.get("type") == "text_delta":
                block["text"] = str(block.get("text", "")) + str(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                partial_json.setdefault(index, []).append(str(delta.get("partial_json", "")))
        elif kind == "message_delta":
            if message is not None and isinstance(ev.get("delta"), dict):
                message["stop_reason"] = ev["delta"].get("stop_reason")
            usage.update(ev.get("usage") or {})
    if message is None:
        return None
    for index, parts in partial_json.items():
        joined = "".join(parts)
        blocks[index]["input"] = _loads(joined.encode()) if joined else {}
        if blocks[index]["input"] is None:
            blocks[index]["input"] = joined
    message["content"] = [blocks[i] for i in sorted(blocks)]
    message["usage"] = usage
    return _anthropic_message(message)


def _chat_message(obj: dict[str, Any]) -> dict[str, Any]:
    choice = (obj.get("choices") or [{}])[0] or {}
    msg = choice.get("message") or {}
    calls = [_tool_call(c.get("id"), (c.get("function") or {}).get("name"),
                        (c.get("function") or {}).get("arguments"))
             for c in msg.get("tool_calls") or [] if isinstance(c, dict)]
    return {"id": obj.get("id"), "model": obj.get("model"), "stop_reason": choice.get("finish_reason"),
            "usage": _usage(obj.get("usage")), "text": _text_of(msg.get("content")), "tool_calls": calls}


def _chat_stream(events: list[tuple[str, str]]) -> dict[str, Any] | None:
    first: dict[str, Any] | None = None
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish, usage = None, None
    for _name, data in events:
        if data.strip() == "[DONE]":
            continue
        chunk = _loads(data.encode())
        if not isinstance(chunk, dict):
            continue
        first = first or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(int(call.get("index", len(calls))), {"id": "", "name": "", "args": []})
                fn = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] = fn.get("name") or slot["name"]
                slot["args"].append(fn.get("arguments") or "")
            finish = choice.get("finish_reason") or finish
    if first is None:
        return None
    return {"id": first.get("id"), "model": first.get("model"), "stop_reason": finish,
            "usage": _usage(usage), "text": "".join(text),
            "tool_calls": [_tool_call(c["id"], c["name"], "".join(c["args"]))
                           for _, c in sorted(calls.items())]}


def _responses_object(obj: dict[str, Any]) -> dict[str, Any]:
    texts, calls = [], []
    for item in obj.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.append(_text_of(item.get("content")))
        elif item.get("type") == "function_call":
            calls.append(_tool_call(item.get("call_id") or item.get("id"), item.get("name"),
                                    item.get("arguments")))
    stop = "tool_calls" if calls else obj.get("status")
    return {"id": obj.get("id"), "model": obj.get("model"), "stop_reason": stop,
            "usage": _usage(obj.get("usage")), "text": "".join(texts), "tool_calls": calls}


def _responses_stream(events: list[tuple[str, str]]) -> dict[str, Any] | None:
    items: list[dict[str, Any]] = []
    created: dict[str, Any] | None = None
    for _name, data in events:
        ev = _loads(data.encode())
        if not isinstance(ev, dict):
            continue
        kind = str(ev.get("type", ""))
        if kind in ("response.completed", "response.incomplete", "response.failed") \
                and isinstance(ev.get("response"), dict):
            return _responses_object(ev["response"])
        if kind == "response.created" and isinstance(ev.get("response"), dict):
            created = ev["response"]
        elif kind == "response.output_item.done" and isinstance(ev.get("item"), dict):
            items.append(ev["item"])
    if created is None:
        return None
    return _responses_object({**created, "output": items})


def parse_response(request: RequestInfo, status: int, content_type: str,
                   body: bytes) -> dict[str, Any] | None:
    """The llm map of a response to `request`, or None when the body is not the API's shape."""
    if status >= 300:
        err = _loads(body)
        message = ""
        if isinstance(err, dict):
            inner = err.get("error")
            message = str(inner.get("message", "")) if isinstance(inner, dict) else str(inner or "")
        return {"stop_reason": f"http_{status}", "text": message, "tool_calls": []}
    if "text/event-stream" in content_type:
        events = sse_events(body)
        parsed = {API_MESSAGES: _anthropic_stream, API_CHAT: _chat_stream,
                  API_RESPONSES: _responses_stream}[request.api](events)
        if parsed is not None:
            parsed["stream"] = True
        return parsed
    obj = _loads(body)
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "message" or request.api == API_MESSAGES and "content" in obj:
        parsed = _anthropic_message(obj)
    elif obj.get("object") == "chat.completion" or "choices" in obj:
        parsed = _chat_message(obj)
    elif obj.get("object") == "response" or "output" in obj:
        parsed = _responses_object(obj)
    else:
        return None
    parsed["stream"] = False
    return parsed
