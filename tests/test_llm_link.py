"""caused_by links from model responses to the processes their tool calls started (ToolCallLinker)."""

from __future__ import annotations

from monitor.event import Event
from monitor.llm import ToolCallLinker

AGENT = 100
SANDBOX = {"id": "sb1", "name": "t"}


def response(t: int, pid: int = AGENT, tools: bool = True, sandbox: dict | None = None) -> Event:
    llm = {"tool_calls": [{"id": "t1", "name": "bash", "arguments": {"command": "cat x"}}] if tools else []}
    return Event(kind="llm_response", time_ns=t, source="llm", process={"pid": pid},
                 sandbox=sandbox or SANDBOX, llm=llm)


def request(t: int, pid: int = AGENT) -> Event:
    return Event(kind="llm_request", time_ns=t, source="llm", process={"pid": pid}, sandbox=SANDBOX, llm={})


def exec_(t: int, pid: int, ancestors: list[int], sandbox: dict | None = None) -> Event:
    return Event(kind="exec", time_ns=t, process={"pid": pid, "ancestors": [{"pid": a} for a in ancestors]},
                 sandbox=sandbox or SANDBOX)


def test_exec_by_a_descendant_inside_the_window_is_linked() -> None:
    linker = ToolCallLinker()
    resp = response(10)
    linker.observe(resp)
    child = exec_(20, 101, [AGENT, 1])
    assert linker.observe(child) == resp.id
    assert child.process["caused_by"] == resp.id
    grandchild = exec_(21, 102, [101, AGENT])
    linker.observe(grandchild)
    assert grandchild.process["caused_by"] == resp.id
    agent_itself = exec_(22, AGENT, [1])
    linker.observe(agent_itself)
    assert agent_itself.process["caused_by"] == resp.id


def test_the_next_request_closes_the_window() -> None:
    linker = ToolCallLinker()
    linker.observe(response(10))
    linker.observe(request(30))
    late = exec_(40, 101, [AGENT])
    assert linker.observe(late) is None and "caused_by" not in late.process


def test_window_is_by_time_not_arrival_order() -> None:
    linker = ToolCallLinker()
    resp = response(10)
    linker.observe(resp)
    linker.observe(request(30))
    # the sensor's exec arrives after the llm source's next request, but happened before it
    early = exec_(25, 101, [AGENT])
    assert linker.observe(early) == resp.id


def test_no_link_outside_lineage_sandbox_or_without_tool_calls() -> None:
    linker = ToolCallLinker()
    linker.observe(response(10))
    assert linker.observe(exec_(20, 555, [1])) is None                      # not the agent's
    assert linker.observe(exec_(20, 101, [AGENT], {"id": "other"})) is None  # another sandbox
    assert linker.observe(exec_(5, 101, [AGENT])) is None                    # before the response
    quiet = ToolCallLinker()
    quiet.observe(response(10, tools=False))
    assert quiet.observe(exec_(20, 101, [AGENT])) is None


def test_a_later_response_takes_over() -> None:
    linker = ToolCallLinker()
    first, second = response(10), response(50)
    linker.observe(first)
    linker.observe(second)
    assert linker.observe(exec_(20, 101, [AGENT])) == first.id
    assert linker.observe(exec_(60, 102, [AGENT])) == second.id
    assert linker.linked == 2


def test_two_agents_in_one_sandbox_are_kept_apart() -> None:
    linker = ToolCallLinker()
    a, b = response(10, pid=100), response(12, pid=200)
    linker.observe(a)
    linker.observe(b)
    assert linker.observe(exec_(20, 101, [100])) == a.id
    assert linker.observe(exec_(20, 201, [200])) == b.id
    linker.forget_sandbox("sb1")
    assert linker.observe(exec_(30, 102, [100])) is None
