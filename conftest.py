"""Fixtures shared by every app's tests.

Tests create data through the real services (``seed_demo``'s helpers,
``risk.services``), not by writing rows by hand, so they exercise the same
validation and auditing as production.
"""

from __future__ import annotations

import pytest

from quanthub.roles import COMPLIANCE, RISK_MANAGER, TRADER


@pytest.fixture
def make_user(db, django_user_model):
    from django.apps import apps
    from django.contrib.auth.models import Group

    from quanthub.roles import ROLES, sync_roles

    # Transactional tests flush the rows data migrations created; put the roles back.
    if Group.objects.filter(name__in=ROLES).count() < len(ROLES):
        sync_roles(apps)

    def make(username: str, *roles: str, password: str = "a-long-test-password", **extra):
        user = django_user_model.objects.create_user(username=username, password=password, is_staff=True, **extra)
        for role in roles:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def trader(make_user):
    return make_user("trader1", TRADER)


@pytest.fixture
def risk_manager(make_user):
    return make_user("risk1", RISK_MANAGER)


@pytest.fixture
def compliance_user(make_user):
    return make_user("compliance1", COMPLIANCE)


@pytest.fixture
def demo_market(db):
    """The synthetic NSE instrument master (NIFTY and BANKNIFTY), loaded through the real loader."""
    from marketdata.demo import ensure_demo_instruments

    return ensure_demo_instruments()


@pytest.fixture(autouse=True)
def _audit_checkpoint_dir(tmp_path_factory, settings):
    """Each test's audit checkpoints in a directory of its own: a checkpoint of
    another test's chain would not match this test's records."""
    folder = tmp_path_factory.mktemp("audit-checkpoints")
    settings.AUDIT_CHECKPOINT_DIR = folder
    return folder


@pytest.fixture(autouse=True)
def _close_sync_thread_connections():
    """Async tests reach the database through asgiref's single sync thread; close
    that thread's connection after each test so PostgreSQL test databases can be
    dropped at the end of the run."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    executor = SyncToAsync.single_thread_executor
    if not getattr(executor, "_shutdown", False):
        executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def _shipped_event_calendar(request):
    """The event calendar a migration ships (2026–27 RBI, Budget, US CPI, NSE holidays)
    is real data, and the fixed dates tests trade on can be real event days (24 Nov
    2026 is an NSE holiday). Tests see it only when marked ``event_calendar``."""
    uses_db = request.node.get_closest_marker("django_db") is not None or any(
        name in request.fixturenames for name in ("db", "transactional_db")
    )
    if uses_db and request.node.get_closest_marker("event_calendar") is None:
        request.getfixturevalue("_django_db_helper")
        from risk.calendars import CALENDAR_2026_2027
        from risk.models import EventDay

        for source in {row["source"] for row in CALENDAR_2026_2027}:
            EventDay.objects.filter(source=source).delete()
    yield


def pytest_collection_modifyitems(config, items):
    """Transactional tests flush every table when they end, including the rows
    data migrations created (roles, default limits, charge rates, schedules).
    Restore them afterwards so no test depends on the order tests run in."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is not None and marker.kwargs.get("transaction") and "serialized_rollback" not in marker.kwargs:
            item.add_marker(pytest.mark.django_db(**marker.kwargs, serialized_rollback=True), append=False)


@pytest.fixture(scope="session", autouse=True)
def _channel_layer_of_this_test_process():
    """On a shared Redis (CI), each test process gets a channel-layer prefix of its own:
    otherwise a fact another worker publishes to the same account's group reaches this
    worker's dashboards, and a test that expects nothing to be pushed sees it."""
    import os

    from django.conf import settings

    layer = settings.CHANNEL_LAYERS["default"]
    if layer["BACKEND"].startswith("channels_redis"):
        layer.setdefault("CONFIG", {})["prefix"] = f"asgi-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        from channels.layers import channel_layers

        channel_layers.backends.clear()
    yield
