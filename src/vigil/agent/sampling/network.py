"""Network source: traffic, error and drop rates per physical NIC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vigil.agent.sampling.rates import PerNameRates
from vigil.agent.sampling.series import Item

# Virtual NICs that would only add noise (and many series).
_SKIP_NIC_PREFIXES = ("lo", "veth", "docker", "br-", "virbr", "vnet", "cali", "flannel")
_FIELDS = ("bytes_recv", "bytes_sent", "errin", "errout", "dropin", "dropout")


class Network:
    """``net.{recv,sent}_bytes_per_second[<nic>]`` and ``net.{errors,drops}_per_second[<nic>]``
    from the second read on; none for a NIC whose counters went back (re-plugged)."""

    def __init__(self, *, ps: Any, clock: Callable[[], float]) -> None:
        self._ps = ps
        self._clock = clock
        self._rates = PerNameRates(_FIELDS)

    def read(self) -> list[Item]:
        """Rates since the previous read."""
        now = self._clock()
        cur = {
            name: c
            for name, c in (self._ps.net_io_counters(pernic=True) or {}).items()
            if not name.startswith(_SKIP_NIC_PREFIXES)
        }
        items: list[Item] = []
        for name, r in self._rates.update(now, cur):
            items += [
                (f"net.recv_bytes_per_second[{name}]", r["bytes_recv"]),
                (f"net.sent_bytes_per_second[{name}]", r["bytes_sent"]),
                (f"net.errors_per_second[{name}]", r["errin"] + r["errout"]),
                (f"net.drops_per_second[{name}]", r["dropin"] + r["dropout"]),
            ]
        return items
