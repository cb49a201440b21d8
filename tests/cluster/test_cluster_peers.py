"""The real peers of issue 13 ("Several nodes, one PostgreSQL"), before the store uses them.

PostgreSQL: a server of its own in a temp folder, on its own loopback port, durable settings, a fresh
database per test, nothing left running after it. HAProxy: docs/cluster.md's sample configuration as it
is, in front of two real ``dicom-node serve`` receivers, DCMTK's echoscu and storescu through it, and its
DICOM health check taking a stopped receiver (or one that does not speak DICOM) out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pydicom
import pytest
from cluster_support import BACKEND, BEHIND_HAPROXY, HaproxyFactory, check_status, health_check_rq
from pynetdicom.pdu import A_ASSOCIATE_RQ

from dicom_node.testing import (
    HaproxyProcess,
    NodeProcess,
    PostgresProcess,
    free_port,
    missing_postgres,
    require,
    storescu,
    wait_for,
    wait_port,
)

pytestmark = pytest.mark.engines("postgresql")  # receivers behind HAProxy are a cluster's: on PostgreSQL

RECEIVE_ONLY = {"worker": {"threads": 0}}
#: a receive-only node as docs/cluster.md sets one up behind its HAProxy (node.proxy_protocol)
RECEIVER = {"node": BEHIND_HAPROXY, **RECEIVE_ONLY}


def stored_uids(node: NodeProcess) -> set[str]:
    """SOP Instance UIDs the node logged as stored (its ingest's "instance stored" line)."""
    return set(re.findall(r"instance stored sop_instance_uid=(\S+)", node.log_text()))


def echoscu(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


# PostgreSQL

def test_postgres_runs_in_its_own_folder_on_its_own_loopback_port(postgres: PostgresProcess,
                                                                  record_property: pytest.RecordProperty) -> None:
    assert postgres.port != 5432 and postgres.pid is not None
    assert postgres.data_dir.is_dir() and (postgres.data_dir / "PG_VERSION").is_file()
    with psycopg.connect(postgres.url()) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                    for name in ("synchronous_commit", "fsync", "listen_addresses", "port",
                                 "unix_socket_directories", "server_encoding", "data_directory")}
        assert conn.execute("SELECT current_user").fetchone() == (postgres.user,)
    assert settings["synchronous_commit"] == "on" and settings["fsync"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1" and settings["port"] == str(postgres.port)
    assert settings["server_encoding"] == "UTF8"
    assert Path(settings["data_directory"]) == postgres.data_dir
    assert Path(settings["unix_socket_directories"]).parent == postgres.data_dir.parent
    server = psutil.Process(postgres.pid)
    if os.geteuid() == 0:  # root may not run PostgreSQL: it runs as the postgres system user
        assert server.username() == "postgres"
    listening = {c.laddr for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.pid == postgres.pid}
    assert {(a.ip, a.port) for a in listening} == {("127.0.0.1", postgres.port)}
    record_property("postgres_start_s", round(postgres.start_s, 2))


def test_postgres_wants_the_password(postgres: PostgresProcess) -> None:
    wrong = postgres.url().replace(postgres.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_each_created_database_is_empty_and_separate(postgres: PostgresProcess) -> None:
    first, second = postgres.create_database("cluster_first"), postgres.create_database("cluster_second")
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    with psycopg.connect(first) as conn:
        assert conn.execute(tables).fetchone() == (0,)
        conn.execute("CREATE TABLE instances (sop_instance_uid text PRIMARY KEY)")
        conn.execute("INSERT INTO instances VALUES ('1.2.3')")
    with psycopg.connect(second) as conn:
        assert conn.execute(tables).fetchone() == (0,)
        assert conn.execute("SELECT current_database()").fetchone() == ("cluster_second",)
    with psycopg.connect(first) as conn:  # what the first one holds was committed
        assert conn.execute("SELECT sop_instance_uid FROM instances").fetchall() == [("1.2.3",)]
    with pytest.raises(psycopg.errors.DuplicateDatabase):
        postgres.create_database("cluster_first")


def test_stop_leaves_no_process_and_a_killed_server_keeps_what_it_committed(tmp_path: Path) -> None:
    why = missing_postgres()
    require(why is None, f"PostgreSQL ({why})")
    with PostgresProcess(tmp_path / "pg") as pg:
        url = pg.create_database("durable")
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (1)")
        assert pg.pid is not None
        server = [psutil.Process(pg.pid), *psutil.Process(pg.pid).children(recursive=True)]
        assert len(server) >= 4  # postmaster, checkpointer, background writer, WAL writer...
        pg.kill()  # a crash: SIGKILL, no checkpoint
        assert not any(p.is_running() for p in server)
        pg.start()  # crash recovery from the WAL, on the same port
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
        assert pg.pid is not None
        server = [psutil.Process(pg.pid), *psutil.Process(pg.pid).children(recursive=True)]
        assert pg.stop() == 0
        assert not any(p.is_running() for p in server)
        with pytest.raises(OSError):
            wait_port(pg.port, timeout_s=1)
        cluster = pg.data_dir.parent
    assert not cluster.exists()


# HAProxy, as docs/cluster.md configures it

def test_the_documented_health_check_is_an_association_request_for_verification() -> None:
    """Decoded by pynetdicom's own PDU parser, not by the code that wrote it."""
    raw = health_check_rq()
    rq = A_ASSOCIATE_RQ()
    rq.decode(raw)
    assert rq.pdu_length == len(raw) - 6
    assert rq.protocol_version == 1
    assert (rq.called_ae_title, rq.calling_ae_title) == ("DICOM_NODE", "HAPROXY_CHECK")
    assert rq.application_context_name == "1.2.840.10008.3.1.1.1"
    (context,) = rq.presentation_context
    assert context.context_id == 1 and context.abstract_syntax == "1.2.840.10008.1.1"
    assert context.transfer_syntax == ["1.2.840.10008.1.2"]
    assert rq.user_information.maximum_length == 16384
    assert rq.user_information.implementation_class_uid.is_valid


def test_a_broken_config_fails_with_haproxys_own_message(tmp_path: Path) -> None:
    from dicom_node.testing import missing_haproxy

    require(missing_haproxy() is None, "HAProxy")
    with pytest.raises(RuntimeError, match=r"(?s)haproxy -c rejects.*balance only supports"):
        HaproxyProcess("defaults\n    mode tcp\nbackend b\n    balance nosuchalgorithm\n", tmp_path, port=1).start()


def test_associations_through_haproxy_reach_both_receivers(dcmtk: None, rsna: list[Path],
                                                           node_factory: type[NodeProcess],
                                                           haproxy_factory: HaproxyFactory) -> None:
    a, b = node_factory("a", **RECEIVER).start(), node_factory("b", **RECEIVER).start()
    ha = haproxy_factory([("node_a", a.port), ("node_b", b.port)])
    assert check_status(ha, "node_a") == check_status(ha, "node_b") == "L7OK"
    assert echoscu(ha.port).returncode == 0
    for f in rsna:  # one association each: leastconn takes turns between receivers with none open
        done = storescu(ha.port, [f])
        assert done.returncode == 0, done.stderr
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in rsna}
    on_a, on_b = stored_uids(a), stored_uids(b)
    assert on_a and on_b, (on_a, on_b)
    assert on_a | on_b == sent and not on_a & on_b
    assert "calling_ae=HAPROXY_CHECK" in a.log_text() and "calling_ae=HAPROXY_CHECK" in b.log_text()
    # The check releases its association and closes with a FIN (linger): no errors in the nodes' logs.
    assert "ERROR" not in a.log_text() + b.log_text()


def test_a_stopped_receiver_is_taken_out_and_the_other_takes_every_association(
        dcmtk: None, rsna: list[Path], node_factory: type[NodeProcess], haproxy_factory: HaproxyFactory,
        record_property: pytest.RecordProperty) -> None:
    a, b = node_factory("a", **RECEIVER).start(), node_factory("b", **RECEIVER).start()
    ha = haproxy_factory([("node_a", a.port), ("node_b", b.port)])
    assert ha.server_status(BACKEND, "node_b") == "UP"
    stopped = time.monotonic()
    assert b.stop() == 0
    wait_for("node_b marked DOWN", lambda: ha.server_status(BACKEND, "node_b") == "DOWN", timeout_s=60, every_s=0.1)
    record_property("haproxy_down_after_s", round(time.monotonic() - stopped, 1))
    assert re.search(r"Server dicom_receivers/node_b is DOWN, reason: Layer4 connection problem", ha.log_text())
    assert ha.server_status(BACKEND, "node_a") == "UP"
    before = {row["svname"]: int(row["stot"]) for row in ha.show_stat() if row["pxname"] == BACKEND}
    for f in rsna:
        done = storescu(ha.port, [f])
        assert done.returncode == 0, done.stderr
    after = {row["svname"]: int(row["stot"]) for row in ha.show_stat() if row["pxname"] == BACKEND}
    assert after["node_a"] - before["node_a"] == len(rsna) and after["node_b"] == before["node_b"]
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in rsna}
    assert stored_uids(a) == sent


def test_receivers_that_refuse_the_association_or_do_not_speak_dicom_are_down(
        dcmtk: None, node_factory: type[NodeProcess], haproxy_factory: HaproxyFactory, tmp_path: Path) -> None:
    """Both have an open port (a plain TCP check would pass them); the DICOM check wants an A-ASSOCIATE-AC
    that accepts Verification. A node with another AE title answers A-ASSOCIATE-RJ; a web server reads
    the check's PROXY v2 header, whose signature starts with CRLF, as an empty request line and closes
    the connection without a byte (before send-proxy-v2 it never answered: "Layer7 timeout")."""
    a = node_factory("a", **RECEIVER).start()
    other = node_factory("other", node={"ae_title": "OTHER_NODE", **BEHIND_HAPROXY}, **RECEIVE_ONLY).start()
    web_port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(web_port, 30, web)
        ha = haproxy_factory([("node_a", a.port), ("other", other.port), ("web", web_port)])
        for name in ("other", "web"):
            wait_for(f"{name} marked DOWN", lambda n=name: ha.server_status(BACKEND, n) == "DOWN", 60, 0.2)
        assert check_status(ha, "other") == "L7RSP"  # an answer, but not an A-ASSOCIATE-AC
        assert check_status(ha, "web") == "L7RSP"  # closed without an answer
        log = ha.log_text()
        assert re.search(r"Server dicom_receivers/other is DOWN, reason: Layer7 invalid response.*"
                         r"no A-ASSOCIATE-AC", log), log[-2000:]
        assert re.search(r"Server dicom_receivers/web is DOWN, reason: Layer7 invalid response, info: \"TCPCHK got"
                         r" an empty response.*no A-ASSOCIATE-AC", log), log[-2000:]
        assert ha.server_status(BACKEND, "node_a") == "UP"
        for _ in range(4):
            assert echoscu(ha.port).returncode == 0
    finally:
        web.terminate()
        web.wait(30)
