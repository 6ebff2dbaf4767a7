"""The request/reply wire spoken by hand, for tests that need bytes no client library
would send (test_hostile_requests.py) or want no library at all (tests/soak.py): the SP
greeting and the protobuf encoding of proto/corral.proto's messages, field by field."""

SP_REQ_HELLO = b"\x00SP\x00\x00\x30\x00\x00"


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def pb_varint(field, v):
    return varint(field << 3) + varint(v)


TYPE_FP32 = 11


def pb_fields(data):
    """Top-level fields of a protobuf message: [(field, wire type, value)]."""
    out, i = [], 0
    while i < len(data):
        key, i = read_varint(data, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
        elif wt == 2:
            n, i = read_varint(data, i)
            v = data[i:i + n]
            i += n
        elif wt == 5:
            v, i = data[i:i + 4], i + 4
        elif wt == 1:
            v, i = data[i:i + 8], i + 8
        else:
            raise ValueError("wire type %d" % wt)
        out.append((f, wt, v))
    return out


def read_varint(data, i):
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i
