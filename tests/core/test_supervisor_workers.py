"""`postwarden up` with more than one Faust worker process: names, ports, refusal."""

from __future__ import annotations

from postwarden.config import load_settings
from postwarden.supervisor import CHILDREN, child_health_port, child_names, run_up


def test_one_worker_by_default():
    assert child_names(load_settings({})) == list(CHILDREN)


def test_extra_workers_start_after_the_first_on_ports_of_their_own():
    settings = load_settings({"POSTWARDEN_WORKER_PROCESSES": "3", "POSTWARDEN_HEALTH_PORT": "9000"})
    names = child_names(settings)
    assert names[names.index("worker"):names.index("worker") + 3] == ["worker", "worker-2", "worker-3"]
    ports = [child_health_port(settings, n) for n in names]
    assert len(set(ports)) == len(ports) and min(ports) > 9000
    assert child_health_port(load_settings({"POSTWARDEN_WORKER_PROCESSES": "2", "POSTWARDEN_HEALTH_PORT": "0"}),
                             "worker-2") == 0


def test_more_workers_than_partitions_is_refused(capsys):
    settings = load_settings({"POSTWARDEN_WORKER_PROCESSES": "3", "POSTWARDEN_TOPIC_PARTITIONS": "2"})
    assert run_up(settings) == 2
    assert "POSTWARDEN_WORKER_PROCESSES=3" in capsys.readouterr().err
