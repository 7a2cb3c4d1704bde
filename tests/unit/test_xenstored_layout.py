"""The daemon's XenStore writes each domain's nodes as libxl does (docs/misc/
xenstore-paths.pandoc; tools/libs/light/libxl_create.c libxl__domain_make,
libxl_dom.c libxl__build_post, libxl_console.c libxl__device_console_add through
libxl_device.c libxl__device_generic_add), and dom0's as xen-init-dom0 does.

The expected permissions are libxl's: roperm = {n0, rN} (dom0 owns, the domain reads),
rwperm = {nN} (the domain owns), noperm = {n0}; the console frontend of console 0 takes
ro_frontend_perms {n0, rN}, its `backend-id` (a frontend entry) frontend_perms {nN, r0}.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from xenopus.domain.config import DomainConfig
from xenopus.toolstack.xenstored import XenStored, start_time_text
from xenopus.xen.xenstore.store import XsError

UUID = "13a1cf29-2421-4f41-8005-b537fb6e4024"


@pytest.fixture
def xs() -> XenStored:
    x = XenStored()
    x.write_domain(3, "web", DomainConfig(name="web", kernel="/k", memory=64, maxmem=96,
                                          vcpus=2, maxvcpus=4), UUID, 1700000000.257)
    return x


def read(x: XenStored, path: str) -> str:
    return x.store.read(x.dom0, path).decode()


def perms(x: XenStored, path: str) -> list[str]:
    return [str(p) for p in x.store.get_perms(x.dom0, path)]


def test_dom0_has_name_and_domid():
    x = XenStored()
    assert read(x, "/local/domain/0/name") == "Domain-0"
    assert read(x, "/local/domain/0/domid") == "0"


def test_home_vm_and_libxl_paths_with_libxls_permissions(xs):
    assert perms(xs, "/local/domain/3") == ["n0", "r3"]
    assert perms(xs, f"/vm/{UUID}") == ["n0", "r3"]
    assert perms(xs, "/libxl/3") == ["n0"]
    assert perms(xs, "/libxl/3/device") == ["n0"]
    assert read(xs, "/libxl/3/type") == "pvh"  # libxl_domain_type_to_string
    assert read(xs, "/local/domain/3/vm") == f"/vm/{UUID}"
    assert read(xs, f"/vm/{UUID}/uuid") == UUID
    assert read(xs, f"/vm/{UUID}/name") == "web"
    assert read(xs, "/local/domain/3/name") == "web"


@pytest.mark.parametrize(("node", "owner"), [
    ("cpu", "ro"), ("memory", "ro"), ("device", "ro"), ("control", "ro"),
    ("device/suspend/event-channel", "rw"), ("control/shutdown", "rw"),
    ("control/feature-poweroff", "rw"), ("control/feature-reboot", "rw"),
    ("control/feature-suspend", "rw"), ("control/sysrq", "rw"), ("data", "rw"),
    ("drivers", "rw"), ("feature", "rw"), ("attr", "rw"), ("error", "rw"),
])
def test_home_subdirectories(xs, node, owner):
    assert perms(xs, f"/local/domain/3/{node}") == (["n0", "r3"] if owner == "ro" else ["n3"])
    if node.startswith("control/feature"):
        assert read(xs, f"/local/domain/3/{node}") == ""  # a placeholder the guest fills


def test_build_post_nodes(xs):
    home = "/local/domain/3"
    assert read(xs, f"{home}/control/platform-feature-multiprocessor-suspend") == "1"
    assert read(xs, f"{home}/control/platform-feature-xs_reset_watches") == "1"
    assert read(xs, f"{home}/memory/static-max") == str(96 * 1024)
    assert read(xs, f"{home}/memory/target") == str(64 * 1024)
    assert read(xs, f"{home}/memory/videoram") == "0"
    assert read(xs, f"{home}/domid") == "3"
    # cpu/N/availability for every N below max_vcpus: online for the avail_vcpus
    assert [read(xs, f"{home}/cpu/{i}/availability") for i in range(4)] == [
        "online", "online", "offline", "offline"]
    with pytest.raises(XsError):
        read(xs, f"{home}/cpu/4/availability")
    # libxl__domain_build for PVH: "%"PRIu64".%02ld" of seconds and hundredths
    assert read(xs, f"/vm/{UUID}/start_time") == "1700000000.25"
    assert start_time_text(5.0) == "5.00"


def test_store_and_console(xs):
    xs.write_nodes(3, "store", {"port": "1", "ring-ref": "222"})
    xs.console_ready(3, {"ring-ref": "223", "port": "2", "type": "xenconsoled",
                         "limit": "1048576"})
    front, back = "/local/domain/3/console", "/local/domain/0/backend/console/3/0"
    assert read(xs, "/local/domain/3/store/port") == "1"
    assert read(xs, "/local/domain/3/store/ring-ref") == "222"
    assert perms(xs, front) == ["n0", "r3"]
    assert read(xs, f"{front}/backend") == back
    assert read(xs, f"{front}/backend-id") == "0"
    assert perms(xs, f"{front}/backend-id") == ["n3", "r0"]
    for key, value in (("limit", "1048576"), ("type", "xenconsoled"), ("output", "pty"),
                       ("tty", ""), ("port", "2"), ("ring-ref", "223")):
        assert read(xs, f"{front}/{key}") == value
        assert perms(xs, f"{front}/{key}") == ["n0", "r3"]
    assert perms(xs, back) == ["n0", "r3"]
    for key, value in (("frontend", front), ("frontend-id", "3"), ("online", "1"),
                       ("state", "1"), ("protocol", "vt100")):
        assert read(xs, f"{back}/{key}") == value
    assert read(xs, "/libxl/3/device/console/0/backend") == back
    assert read(xs, "/libxl/3/device/console/0/frontend") == front


def test_rename_and_remove(xs):
    xs.rename(3, "db")
    assert read(xs, "/local/domain/3/name") == "db"
    assert read(xs, f"/vm/{UUID}/name") == "db"
    xs.console_ready(3, {})
    xs.remove_domain(3)
    for path in ("/local/domain/3", f"/vm/{UUID}", "/libxl/3",
                 "/local/domain/0/backend/console/3"):
        with pytest.raises(XsError):
            read(xs, path)
    assert read(xs, "/local/domain/0/name") == "Domain-0"


def test_publish_links_xens_path_and_never_replaces_another(tmp_path):
    x = XenStored()
    target = tmp_path / "xenstored.sock"
    x.path = str(target)  # as serve() sets it, without serving
    link = tmp_path / "xenstored" / "socket"
    x.publish(str(link))
    assert os.readlink(link) == str(target)
    x.unpublish()
    assert not os.path.lexists(link)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(link))  # another xenstored's socket
    x.publish(str(link))
    assert not os.path.islink(link)
    x.unpublish()
    assert os.path.exists(link)
    other.close()


@pytest.mark.skipif(shutil.which("xenstore-read") is None, reason="xenstore-utils not installed")
def test_xens_tools_read_the_layout(xs):
    import asyncio
    import threading

    with tempfile.TemporaryDirectory(prefix="xs-") as d:  # AF_UNIX paths are short
        path = os.path.join(d, "socket")
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(xs.serve(path))
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert started.wait(10)
        env = dict(os.environ, XENSTORED_PATH=path)
        try:
            def tool(*argv: str) -> str:
                return subprocess.run(argv, env=env, capture_output=True, text=True,
                                      timeout=20, check=True).stdout

            assert tool("xenstore-read", "/local/domain/0/name") == "Domain-0\n"
            first = tool("xenstore-ls", "-p", "/local/domain/3/control").splitlines()[0]
            assert first.startswith('shutdown = ""') and first.endswith("(n3)")
            assert tool("xenstore-read", "/local/domain/3/cpu/3/availability") == "offline\n"
        finally:
            async def shutdown() -> None:  # the clients' connections, then the loop
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def test_preserve_moves_the_domain_to_a_fresh_vm_path(xs):
    """libxl_domain_preserve: /vm/NEW with roperm and its uuid, the home's vm pointing
    there, the name changed in both; the old /vm is left for the domain taking over."""
    new = "0f0e0d0c-0b0a-4908-8706-050403020100"
    xs.preserve(3, "web-20261202T1530Z", new)
    assert read(xs, "/local/domain/3/vm") == f"/vm/{new}"
    assert read(xs, f"/vm/{new}/uuid") == new
    assert read(xs, f"/vm/{new}/name") == "web-20261202T1530Z"
    assert perms(xs, f"/vm/{new}") == ["n0", "r3"]
    assert read(xs, "/local/domain/3/name") == "web-20261202T1530Z"
    assert read(xs, f"/vm/{UUID}/uuid") == UUID  # the old one stays
    xs.remove_domain(3)
    with pytest.raises(XsError):
        read(xs, f"/vm/{new}")
    assert read(xs, f"/vm/{UUID}/uuid") == UUID  # not the preserved domain's to remove


def test_xl_cfg_xenstore_settings_apply_around_introduce() -> None:
    """libxl's order: xenstore_feature_mask as SET_FEATURE before INTRODUCE (after it the
    store refuses), xenstore_quota as SET_QUOTA on the introduced domain; a domain without
    them gets every feature and the global quotas."""
    from xenopus.xen.xenstore.store import FEATURES

    x = XenStored()
    plain = DomainConfig(name="plain", kernel="/k")
    x.write_domain(4, "plain", plain, UUID, 1700000000.0)
    x.introduce(4, plain)
    assert x.store.get_feature(x.dom0, 4) == FEATURES
    assert x.store.quota_of(4) == x.store.quota
    cfg = DomainConfig(name="q", kernel="/k", xenstore_quota=["nodes=7", "watches=3"],
                       xenstore_feature_mask=1)
    x.write_domain(5, "q", cfg, UUID, 1700000000.0)
    x.introduce(5, cfg)
    assert x.store.get_feature(x.dom0, 5) == FEATURES & 1 == 1
    assert (x.store.quota_of(5).nodes, x.store.quota_of(5).watches) == (7, 3)
    assert x.quota_get(5)[:2] == [("nodes", 7), ("watches", 3)]  # what xl xenstore-quota-get shows
    assert x.store.quota_of(4).nodes == x.store.quota.nodes  # only its own
