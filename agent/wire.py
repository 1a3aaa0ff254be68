"""Just enough protobuf wire format to route a ModelInferRequest unparsed.

The agent reads only ``model_name`` (field 1) from a request and, when the
model is named by a header or a vmodel, rewrites it; everything else passes
through as bytes. Clients put field 1 first (protobuf serialises in field
order), so the common case reads a few bytes.
"""

from __future__ import annotations

from agent.errors import InvalidRequest

_MODEL_NAME_TAG = 0x0A  # field 1, wire type 2 (length-delimited)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise InvalidRequest("malformed request: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _find_model_name(buf: bytes) -> tuple[int, int, int] | None:
    """(field start, value start, value end) of field 1, or None."""
    pos = 0
    end = len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            if field == 1:
                if pos + length > end:
                    break
                return start, pos, pos + length
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise InvalidRequest(f"malformed request: wire type {wire_type}")
    if pos > end:
        raise InvalidRequest("malformed request: truncated field")
    return None


def read_model_name(buf: bytes) -> str:
    """The request's ``model_name`` ('' when absent)."""
    if len(buf) > 1 and buf[0] == _MODEL_NAME_TAG and buf[1] < 0x80:
        return buf[2 : 2 + buf[1]].decode("utf-8", "replace")  # the common case
    found = _find_model_name(buf)
    if found is None:
        return ""
    return buf[found[1] : found[2]].decode("utf-8", "replace")


def replace_model_name(buf: bytes, name: str) -> bytes:
    """The same request with ``model_name`` set to ``name``."""
    encoded = name.encode()
    field = bytes([_MODEL_NAME_TAG]) + _encode_varint(len(encoded)) + encoded
    found = _find_model_name(buf)
    if found is None:
        return field + buf
    return buf[: found[0]] + field + buf[found[2] :]
