#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/corpus/<target>/seed-*: run from anywhere.

The input layouts are the fuzz targets' (see each target's doc comment)."""
import hashlib
import hmac
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
KNOWN = b"sk_live_known_key_0123"


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# key_source: config byte (sources | limit << 2), placement byte, payload.
BEARER, HEADER, QUERY, ALL = 0, 1, 2, 3
LIMIT_DEFAULT, LIMIT_16, LIMIT_EXACT, LIMIT_UNDER = 0, 4, 8, 12
AUTH, XKEY, QENC, QRAW, BASIC, TWICE = 1, 2, 4, 8, 16, 32
for name, config, place, payload in [
    ("valid-bearer", BEARER, AUTH, b"Bearer " + KNOWN),
    ("lowercase-scheme", BEARER, AUTH, b"bearer " + KNOWN),
    ("tab-after-scheme", BEARER, AUTH, b"Bearer\t" + KNOWN),
    ("ows-around", BEARER, AUTH, b"\t Bearer   " + KNOWN + b" \t"),
    ("padding", BEARER, AUTH, b"Bearer abc=="),
    ("basic-beside-bearer", BEARER, AUTH | BASIC, b"Bearer " + KNOWN),
    ("two-bearers", BEARER, AUTH | TWICE, b"Bearer " + KNOWN),
    ("huge", BEARER, AUTH, b"Bearer " + b"a" * 1100),
    ("limit-exact", BEARER | LIMIT_EXACT, AUTH, b"Bearer " + KNOWN),
    ("limit-one-under", BEARER | LIMIT_UNDER, AUTH, b"Bearer " + KNOWN),
    ("non-utf8", BEARER, AUTH, b"Bearer \xff\xfe\x80"),
    ("header-plain", HEADER, XKEY, KNOWN),
    ("header-non-ascii", HEADER, XKEY, b"sk_\xc3\xa9"),
    ("query", QUERY, QRAW, b"api_key=" + KNOWN),
    ("query-encoded", QUERY, QENC, KNOWN),
    ("query-plus", QUERY, QRAW, b"api_key=" + KNOWN + b"+"),
    ("query-twice", QUERY, QRAW, b"api_key=a&api_key=b"),
    ("query-name-encoded", QUERY, QRAW, b"api%5Fkey=" + KNOWN),
    ("all-sources", ALL, AUTH | XKEY, KNOWN),
]:
    write("key_source", name, bytes([config, place]) + payload)

# route_path: method byte (0 GET, 1 HEAD, 2 POST, 3 DELETE), request target.
for name, method, path in [
    ("health", 0, b"/health"),
    ("double-slash", 0, b"//health"),
    ("trailing-slash", 0, b"/health/"),
    ("dot-dot", 0, b"/public/../users/me"),
    ("encoded-dots", 0, b"/public/%2e%2e/admin"),
    ("encoded-slash", 0, b"/public%2Fadmin"),
    ("encoded-letter", 0, b"/public/%61dmin"),
    ("encoded-param", 0, b"/users/%6De"),
    ("semicolon", 0, b"/users/me;x=1"),
    ("lowercase-hex", 0, b"/x/caf%c3%a9"),
    ("raw-brace", 0, b"/x/{"),
    ("encoded-subdelim", 0, b"/x/a%21b"),
    ("backslash", 0, b"/files/private\\x"),
    ("post-param", 2, b"/users/42"),
    ("merged-slashes", 0, b"/public/admin//x"),
    ("query", 1, b"/health?x=/../admin"),
]:
    write("route_path", name, bytes([method]) + path)

# redis_value: now (u64 LE, Unix ms), left (u64 LE: bit 0 = present, the
# rest ms), the byte to change in a sealed copy, the value.
SECRET = b"fuzz value secret"
NAME = b"apikey:{9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}"


def seal(envelope, name=NAME, secret=SECRET):
    key = hmac.new(secret, b"tower-api-key Redis value seal v1", hashlib.sha256).digest()
    tag = hmac.new(key, name + b"\0" + envelope, hashlib.sha256).digest()[:16]
    return b"s1:" + tag.hex().encode() + b":" + envelope


def head(now=1_000, left=None, flip=0):
    left = 0 if left is None else (left << 1) | 1
    return struct.pack("<QQB", now, left, flip)


VALID = b'{"v":1,"kind":"valid","principal":{"id":7,"name":"acme","scopes":["admin"]}}'
INVALID = b'{"v":1,"kind":"invalid"}'
INSTANTS = b'{"v":1,"kind":"valid","principal":{"id":1,"name":"a"},"fresh_until":101000,"refresh_at":91000}'
for name, data in [
    ("valid", head() + VALID),
    ("invalid", head() + INVALID),
    ("instants-fresh", head(51_000, 100_000) + INSTANTS),
    ("instants-aging", head(91_000, 60_000, 40) + INSTANTS),
    ("instants-stale", head(101_000, 50_000) + INSTANTS),
    ("other-version", head() + b'{"v":2,"kind":"invalid"}'),
    ("valid-without-principal", head() + b'{"v":1,"kind":"valid"}'),
    ("invalid-with-deadline", head() + b'{"v":1,"kind":"invalid","fresh_until":5}'),
    ("not-json", head() + b"not json"),
    ("empty", head()),
    ("sealed-valid", head(flip=10) + seal(VALID)),
    ("sealed-invalid", head(flip=3) + seal(INVALID)),
    ("sealed-other-name", head() + seal(VALID, name=b"apikey:{00}")),
    ("sealed-other-secret", head() + seal(VALID, secret=b"another")),
    ("sealed-uppercase-tag", head() + seal(VALID)[:3] + seal(VALID)[3:35].upper() + seal(VALID)[35:]),
    ("sealed-short-tag", head() + b"s1:0123:" + VALID),
]:
    write("redis_value", name, data)
