"""Source leases (:mod:`popflow.locks`) on SQLite, PostgreSQL and MariaDB.

One holder at a time, even when contenders race from several connections; an expired lease or one
whose process died (a real process, SIGKILLed) is taken over; a renewed lease is not; a holder
that lost its lease cannot renew or release the new holder's.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from popflow.locks import Lease, LockBusy
from popflow.processes import this_host
from popflow.state import StateStore
from popflow.state_tables import locks
from popflow.timestamps import now

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stores(store_url: str) -> Iterator[list[StateStore]]:
    """Three state stores (three connection pools) on one database, as three processes would have."""
    opened = [StateStore(store_url) for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def test_one_holder_at_a_time(stores: list[StateStore]) -> None:
    first = Lease(stores[0], "support").acquire()
    with pytest.raises(LockBusy) as busy:
        Lease(stores[1], "support").acquire()
    assert busy.value.holder is not None
    assert busy.value.holder.owner == first.owner
    assert busy.value.holder.describe().startswith(f"{this_host()}:")
    with Lease(stores[1], "orders"):  # another source: its own lease
        pass
    first.release()
    second = Lease(stores[1], "support").acquire()
    second.release()
    assert second.holder() is None


def _contend(lease: Lease, barrier: threading.Barrier, won: list[Lease]) -> None:
    barrier.wait()
    with contextlib.suppress(LockBusy):
        won.append(lease.acquire())


def test_contenders_racing_for_a_free_or_dead_lease_get_exactly_one_winner(stores: list[StateStore]) -> None:
    for round_number in range(4):
        if round_number % 2:  # every other round starts from a lease left by a process that died
            with stores[0].transaction() as connection:
                connection.execute(insert(locks).values(name="support", owner=f"{this_host()}:999999999:dead",
                                                        acquired_at=now(), expires_at=now() + timedelta(hours=1)))
        contenders = [Lease(store, "support") for store in stores for _ in range(2)]
        barrier = threading.Barrier(len(contenders))
        won: list[Lease] = []

        threads = [threading.Thread(target=_contend, args=(lease, barrier, won)) for lease in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(won) == 1, f"round {round_number}: {len(won)} winners"
        assert won[0].holder() is not None and won[0].holder().owner == won[0].owner  # type: ignore[union-attr]
        won[0].release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew_or_release_it(
        stores: list[StateStore]) -> None:
    stale = Lease(stores[0], "support", lease=1.5, renew_every=3600).acquire()  # never renewed
    with pytest.raises(LockBusy):
        Lease(stores[1], "support").acquire()
    time.sleep(2.6)  # MariaDB keeps whole seconds
    fresh = Lease(stores[1], "support").acquire()
    assert not stale.renew()
    stale.release()
    assert fresh.holder() is not None and fresh.holder().owner == fresh.owner  # type: ignore[union-attr]
    fresh.release()


def test_a_renewed_lease_outlives_its_length(stores: list[StateStore]) -> None:
    held = Lease(stores[0], "support", lease=1.5, renew_every=0.3).acquire()
    time.sleep(3.0)
    with pytest.raises(LockBusy):
        Lease(stores[1], "support").acquire()
    assert not held.lost.is_set()
    held.release()


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(store_url: str,
                                                                           tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from popflow.locks import Lease\nfrom popflow.state import StateStore\n"
         "lease = Lease(StateStore(sys.argv[1]), 'support', lease=3600).acquire()\n"
         "print(lease.owner, flush=True)\ntime.sleep(120)\n", store_url],
        stdout=subprocess.PIPE, text=True)
    try:
        owner = holder.stdout.readline().strip()  # type: ignore[union-attr]
        assert owner.startswith(f"{this_host()}:{holder.pid}:")
        store = StateStore(store_url)
        try:
            with pytest.raises(LockBusy) as busy:
                Lease(store, "support").acquire()  # alive: refused, although it is our host
            assert busy.value.holder is not None
            assert busy.value.holder.owner == owner
            holder.kill()
            holder.wait(10)
            taken = Lease(store, "support").acquire()  # dead: taken at once, an hour before expiry
            assert taken.holder().owner == taken.owner  # type: ignore[union-attr]
            taken.release()
        finally:
            store.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
