"""gVisor's remote-sink wire format: the handshake and the 8-byte header before each protobuf point.

    u16 header_size | u16 message_type | u32 dropped_so_far | protobuf message ...

`header_size` lets gVisor grow the header; the payload starts at that offset. `dropped_so_far` is
the sandbox's running count of points it could not write to the socket (wraps at 2**32).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from monitor.gvisor.proto import points_pb2 as pb

HEADER = struct.Struct("<HHI")
PROTOCOL_VERSION = 1
MAX_MESSAGE = 1 << 20  # a point larger than this is truncated by recv and counted as malformed
HANDSHAKE = pb.Handshake(version=PROTOCOL_VERSION).SerializeToString()

T = pb.MessageType
MESSAGE_CLASSES: dict[int, type[Message]] = {
    T.MESSAGE_CONTAINER_START: pb.ContainerStart,
    T.MESSAGE_SENTRY_CLONE: pb.CloneInfo,
    T.MESSAGE_SENTRY_EXEC: pb.ExecveInfo,
    T.MESSAGE_SENTRY_EXIT_NOTIFY_PARENT: pb.ExitNotifyParentInfo,
    T.MESSAGE_SENTRY_TASK_EXIT: pb.TaskExit,
    T.MESSAGE_SYSCALL_RAW: pb.Syscall,
    T.MESSAGE_SYSCALL_OPEN: pb.Open,
    T.MESSAGE_SYSCALL_CLOSE: pb.Close,
    T.MESSAGE_SYSCALL_CONNECT: pb.Connect,
    T.MESSAGE_SYSCALL_EXECVE: pb.Execve,
    T.MESSAGE_SYSCALL_SOCKET: pb.Socket,
    T.MESSAGE_SYSCALL_CHDIR: pb.Chdir,
    T.MESSAGE_SYSCALL_SETID: pb.Setid,
    T.MESSAGE_SYSCALL_SETRESID: pb.Setresid,
    T.MESSAGE_SYSCALL_BIND: pb.Bind,
    T.MESSAGE_SYSCALL_ACCEPT: pb.Accept,
    T.MESSAGE_SYSCALL_WRITE: pb.Write,
}


class MalformedMessage(ValueError):
    """A datagram from the sink socket that is not a header + decodable point."""


@dataclass(slots=True)
class Point:
    message_type: int
    dropped: int
    message: Message | None  # None: a type this monitor does not decode (counted, skipped)


def decode(datagram: bytes) -> Point:
    """One SOCK_SEQPACKET datagram -> Point; raises MalformedMessage on anything inconsistent."""
    if len(datagram) < HEADER.size:
        raise MalformedMessage(f"datagram of {len(datagram)} bytes is shorter than the header")
    header_size, message_type, dropped = HEADER.unpack_from(datagram)
    if header_size < HEADER.size or header_size > len(datagram):
        raise MalformedMessage(f"header size {header_size} outside 8..{len(datagram)}")
    cls = MESSAGE_CLASSES.get(message_type)
    if cls is None:
        return Point(message_type, dropped, None)
    message = cls()
    try:
        message.ParseFromString(datagram[header_size:])
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise MalformedMessage(f"type {message_type}: {exc}") from None
    return Point(message_type, dropped, message)


def decode_handshake(datagram: bytes) -> int:
    """The peer's protocol version; raises MalformedMessage when it is not a Handshake."""
    message = pb.Handshake()
    try:
        message.ParseFromString(datagram)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise MalformedMessage(f"handshake: {exc}") from None
    return message.version


def encode(message_type: int, message: Message, dropped: int = 0) -> bytes:
    """Header + serialized point, exactly as runsc sends it (tests, benchmarks, fuzzing)."""
    return HEADER.pack(HEADER.size, message_type, dropped & 0xFFFFFFFF) + message.SerializeToString()
