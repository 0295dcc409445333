"""With the lab's ``slow`` fault on one client, the wave's other users go through their whole
wave (enable, import, verify, disable) while the slow client is still being upgraded; the slow
client's own users wait for it (runner.engine: a wave flows by its dependencies). Asserted on
the order of the outcomes, not on times."""
from __future__ import annotations

import pytest

from runner.lab import faults
from scenario_support import make_scenario

pytestmark = pytest.mark.slow


def test_only_the_users_of_a_slow_client_wait_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "SLOW_SECONDS", 4.0)   # each command on the slow client: well past
    # the others' whole chain (chunks linger 0.2 s for more users), even on a loaded machine
    sc = make_scenario(tmp_path, "immediate.yml", seed=8, clients=5, users_per_client=1, contacts=3)
    users = sc.manifest["users"]
    slow = sorted({c for u in users.values() for c in u["clients"]})[0]
    assert sc.runner("lab", "faults", "--dir", str(sc.lab_dir), "--host", slow, "slow=1").code == 0
    run = sc.apply()
    assert run.code == 0, run.out[-3000:]
    order = [(t["module"], t["target"]) for t in run.tasks]
    slow_upgraded = order.index(("upgrade_messenger", slow))
    others = [a for a, u in users.items() if slow not in u["clients"]]
    waiting = [a for a, u in users.items() if slow in u["clients"]]
    assert others and waiting
    assert any(order.index(("disable_exchange_im", a)) < slow_upgraded for a in others), (slow, users, order)
    for a in waiting:  # a user is moved on only after their client's upgrade
        assert order.index(("enable_lcs_users", a)) > slow_upgraded, order
