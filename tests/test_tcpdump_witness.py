"""The tcpdump witness refuses a recording that lost packets."""

import pytest

from tests.tcpdump_witness import assert_kept_everything

HEAD = "listening on eth0, link-type EN10MB (Ethernet), snapshot length 256 bytes\n"


def test_a_complete_recording_passes():
    assert_kept_everything(HEAD + "251 packets captured\n251 packets received by filter\n"
                           "0 packets dropped by kernel\n")


@pytest.mark.parametrize("tail", [
    # tcpdump blocked on a full stdout pipe, then stopped: what CI saw.
    "268 packets captured\n341 packets received by filter\n0 packets dropped by kernel\n",
    "300 packets captured\n341 packets received by filter\n41 packets dropped by kernel\n",
    "tcpdump: Unable to write output: Interrupted system call\n",
])
def test_a_recording_that_lost_packets_fails(tail):
    with pytest.raises(AssertionError):
        assert_kept_everything(HEAD + tail)
