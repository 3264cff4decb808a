"""The DNS wire format of the lab's UDP traffic: queries built byte for byte,
answers read back, and every short or garbled answer a BadAnswer (never an
IndexError or struct.error). No root needed."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest

from tracer.errors import LabError, UsageError
from tracer.lab.dns_wire import (
    BadAnswer,
    build_query,
    encode_name,
    parse_txt_answer,
    read_name,
)

# A real answer of the lab's dnsmasq 2.90 to build_query(0x1234, "whoami.lab").
REAL_ANSWER = (
    b"\x124\x85\x80\x00\x01\x00\x01\x00\x00\x00\x00\x06whoami\x03lab\x00\x00\x10\x00\x01"
    b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x00\x00#"
    b'"pod=p1 ip=10.199.250.1 node=node-a'
)
QUESTION = b"\x06whoami\x03lab\x00\x00\x10\x00\x01"


def _answer(txid=0x1234, flags=0x8580, qd=1, an=1, question=QUESTION, records=None):
    if records is None:
        text = b"pod=p1 ip=10.199.250.1 node=node-a"
        records = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, len(text) + 1) + bytes([len(text)]) + text
    return struct.pack("!HHHHHH", txid, flags, qd, an, 0, 0) + question + records


def test_query_bytes():
    assert build_query(0x1234, "whoami.lab") == (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION
    )
    assert encode_name("whoami.lab.") == b"\x06whoami\x03lab\x00"
    assert encode_name("") == b"\x00"


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".lab", "é.lab", ".".join(["abcdefg"] * 40)])
def test_bad_names_are_usage_errors(name):
    with pytest.raises(UsageError) as exc:
        encode_name(name)
    assert exc.value.exit_code == 2
    assert "\n" not in str(exc.value) and str(exc.value).startswith("DNS name")


def test_bad_txid_is_usage_error():
    with pytest.raises(UsageError, match="transaction id"):
        build_query(70000, "whoami.lab")


def test_real_answer_parses():
    assert parse_txt_answer(REAL_ANSWER, 0x1234, "whoami.lab") == (
        "pod=p1 ip=10.199.250.1 node=node-a",
    )
    # Names compare case-insensitively (DNS 0x20 randomisation).
    assert parse_txt_answer(REAL_ANSWER, 0x1234, "WhoAmI.Lab.")


def test_txt_of_several_strings_and_other_records():
    a_rec = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 1])
    txt = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, 8) + b"\x03pod\x03=p1"
    other = b"\x05other\x00" + struct.pack("!HHIH", 16, 1, 0, 2) + b"\x01x"
    msg = _answer(an=3, records=a_rec + txt + other)
    assert parse_txt_answer(msg, 0x1234, "whoami.lab") == ("pod=p1",)


def test_every_truncation_is_a_bad_answer():
    for n in range(len(REAL_ANSWER)):
        with pytest.raises(BadAnswer) as exc:
            parse_txt_answer(REAL_ANSWER[:n], 0x1234, "whoami.lab")
        assert exc.value.args[0].startswith(("truncated", "no TXT")), (n, exc.value.args)
        assert isinstance(exc.value, LabError) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (_answer(txid=0x4321), "wrong id"),
        (_answer(flags=0x0100), "not a response"),
        (_answer(flags=0x8580 | 0x0800), "wrong opcode"),
        (_answer(flags=0x8580 | 0x0200), "truncated (TC)"),
        (_answer(flags=0x8583, an=0, records=b""), "rcode NXDOMAIN"),
        (_answer(flags=0x8585, an=0, records=b""), "rcode REFUSED"),
        (_answer(flags=0x858B, an=0, records=b""), "rcode 11"),
        (_answer(qd=2), "wrong question count"),
        (_answer(question=b"\x05other\x03lab\x00\x00\x10\x00\x01"), "wrong question"),
        (_answer(question=b"\x06whoami\x03lab\x00\x00\x01\x00\x01"), "wrong question"),
        (_answer(an=0, records=b""), "no TXT answer"),
        # A pointer to itself, forwards, past the end; a reserved label type.
        (_answer(records=b"\xc0\x1c" + b"\x00" * 10), "bad name pointer"),
        (_answer(records=b"\xc0\x7f" + b"\x00" * 10), "bad name pointer"),
        (_answer(records=b"\x40abc"), "bad label type"),
        # rdlength past the end; a TXT string longer than its record.
        (_answer(records=b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, 50) + b"\x02ab"), "truncated record"),
        (_answer(records=b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, 3) + b"\x09ab"),
         "truncated TXT string"),
    ],
)
def test_garbled_answers(msg, why):
    with pytest.raises(BadAnswer) as exc:
        parse_txt_answer(msg, 0x1234, "whoami.lab")
    assert exc.value.args[0] == why
    assert exc.value.exit_code == 1 and "\n" not in str(exc.value)


def test_pointer_loop_is_bounded():
    # A label, then a pointer back to it: a name that never ends. The name
    # length (or jump) limit ends it.
    msg = b"\x00" * 12 + b"\x01a\xc0\x0c"
    with pytest.raises(BadAnswer) as exc:
        read_name(msg, 12)
    assert exc.value.args[0] in ("name too long", "bad name pointer")


def test_random_garbage_never_escapes():
    rng = random.Random(14)
    for _ in range(5000):
        msg = bytearray(REAL_ANSWER)
        for _ in range(rng.randint(1, 6)):
            msg[rng.randrange(len(msg))] = rng.randrange(256)
        cut = rng.randint(0, len(msg) + 8)
        data = bytes(msg[:cut]) + bytes(rng.randrange(256) for _ in range(max(0, cut - len(msg))))
        with contextlib.suppress(BadAnswer):  # anything else fails the test
            parse_txt_answer(data, 0x1234, "whoami.lab")
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        with contextlib.suppress(BadAnswer):
            parse_txt_answer(b"\x12\x34" + data, 0x1234, "whoami.lab")
