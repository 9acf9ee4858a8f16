from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ModelIdentifier(_message.Message):
    __slots__ = ("identifier", "version", "name")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    identifier: str
    version: str
    name: str
    def __init__(self, identifier: _Optional[str] = ..., version: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...
