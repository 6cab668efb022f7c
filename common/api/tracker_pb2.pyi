from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Content(_message.Message):
    __slots__ = ("size", "sha256", "piece_size", "root")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PIECE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: bytes
    piece_size: int
    root: bytes
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., piece_size: _Optional[int] = ..., root: _Optional[bytes] = ...) -> None: ...

class Holding(_message.Message):
    __slots__ = ("path", "content", "have")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: Content
    have: bytes
    def __init__(self, path: _Optional[str] = ..., content: _Optional[_Union[Content, _Mapping]] = ..., have: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("agent_id", "base_url")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    base_url: str
    def __init__(self, agent_id: _Optional[str] = ..., base_url: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("lease_seconds", "heartbeat_seconds")
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: int
    heartbeat_seconds: int
    def __init__(self, lease_seconds: _Optional[int] = ..., heartbeat_seconds: _Optional[int] = ...) -> None: ...

class AnnounceRequest(_message.Message):
    __slots__ = ("agent_id", "replace", "added", "removed")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    replace: bool
    added: _containers.RepeatedCompositeFieldContainer[Holding]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., replace: _Optional[bool] = ..., added: _Optional[_Iterable[_Union[Holding, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class AnnounceReply(_message.Message):
    __slots__ = ("holdings",)
    HOLDINGS_FIELD_NUMBER: _ClassVar[int]
    holdings: int
    def __init__(self, holdings: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("lease_seconds",)
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: int
    def __init__(self, lease_seconds: _Optional[int] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("name", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: bytes
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("kind", "url", "pieces_url", "agent_id", "have")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Source.Kind]
        AGENT: _ClassVar[Source.Kind]
        MIRROR: _ClassVar[Source.Kind]
    KIND_UNSPECIFIED: Source.Kind
    AGENT: Source.Kind
    MIRROR: Source.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PIECES_URL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    kind: Source.Kind
    url: str
    pieces_url: str
    agent_id: str
    have: bytes
    def __init__(self, kind: _Optional[_Union[Source.Kind, str]] = ..., url: _Optional[str] = ..., pieces_url: _Optional[str] = ..., agent_id: _Optional[str] = ..., have: _Optional[bytes] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("content", "name", "sources", "live_holders")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    LIVE_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    content: Content
    name: str
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    live_holders: int
    def __init__(self, content: _Optional[_Union[Content, _Mapping]] = ..., name: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., live_holders: _Optional[int] = ...) -> None: ...

class LocateReply(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class Mirror(_message.Message):
    __slots__ = ("url", "name", "sha256", "size")
    URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    url: str
    name: str
    sha256: bytes
    size: int
    def __init__(self, url: _Optional[str] = ..., name: _Optional[str] = ..., sha256: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class AddMirrorRequest(_message.Message):
    __slots__ = ("mirror",)
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    mirror: Mirror
    def __init__(self, mirror: _Optional[_Union[Mirror, _Mapping]] = ...) -> None: ...

class AddMirrorReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveMirrorRequest(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class RemoveMirrorReply(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListMirrorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMirrorsReply(_message.Message):
    __slots__ = ("mirrors",)
    MIRRORS_FIELD_NUMBER: _ClassVar[int]
    mirrors: _containers.RepeatedCompositeFieldContainer[Mirror]
    def __init__(self, mirrors: _Optional[_Iterable[_Union[Mirror, _Mapping]]] = ...) -> None: ...
