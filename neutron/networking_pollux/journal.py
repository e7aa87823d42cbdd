"""The journal: what etcd still has to be told, kept in Neutron's database so that an
etcd outage or a neutron-server restart loses nothing.

A row is written in the same database transaction as the Neutron change it follows
(the mechanism driver's `*_precommit`, Neutron's PRECOMMIT callbacks), so a committed
change always has its row. A row names what to reconcile (a port on a host, a network,
a security group, a whole host, the L3 host...), never the values: the drainer
recomputes the keys from the database when it takes the row, so a row taken late writes
what Neutron holds then, and two rows naming the same thing cost one recomputation.

A drainer runs as a plugin worker (wherever Neutron runs those), and another in each
process that makes changes, started by its first.
They share the table: a drainer claims the oldest rows (`claimed_by`, `claimed_at`) in
a locking read, and claims nothing while another's claim on them is live, so the rows
are taken in order by one drainer at a time and one host's keys are never written by
two drainers at once. A claim is released when etcd fails (so that a process killed
while etcd is away leaves none behind) and expires after CLAIM_TIMEOUT (a process killed
while writing), at once when the claim's process was on this host and is gone. A row is deleted only after etcd accepted its keys; on an etcd error the
drainer backs off (BACKOFF_FIRST doubling to BACKOFF_MAX), logs, counts, and retries.

At start the plugin worker's drainer queues an ALL row behind the rows a previous
process left: it takes those, then reconciles every host once against the database
(what was lost before the journal existed, or in the gaps below), under a claim like any
row. A drainer drains when woken (a postcommit in its process) and every POLL seconds
(rows written by other processes).

Gaps: Neutron publishes no PRECOMMIT event for an address group's change or a router
interface's add and remove, so their rows are written right after the change commits;
a process killed in between loses them until the next start's full reconcile.
"""

import datetime
import os
import socket
import threading
import time
import uuid

from etcd3gw import exceptions as etcd_exc
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from neutron_lib.db import model_base
from oslo_log import log as logging
import sqlalchemy as sa

from networking_pollux import green_worker

LOG = logging.getLogger(__name__)

#: Seconds a claim lives without its drainer touching it (between rows: a full
#: reconcile that takes longer lets another drainer in beside it).
CLAIM_TIMEOUT = 60.0
#: Rows claimed at once.
BATCH = 50
#: Backoff after an etcd error: the first wait, doubled up to the last.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 2.0
#: Seconds between looks at the table when nothing woke the drainer.
POLL = 2.0

#: What a row names (`kind`), and what its `object_id` and `host` are then.
PORT = 'port'                      # a port (object_id) on a host
MEMBER_JOIN = 'member_join'        # a new port's (object_id) addresses join its groups
MEMBERS = 'members'                # a security group's (object_id) members
NETWORK = 'network'                # a network (object_id) where it is held
SUBNET = 'subnet'                  # a subnet (object_id) where its network is held
SECURITY_GROUP = 'security_group'  # a security group (object_id) where it is held
ADDRESS_GROUP = 'address_group'    # an address group (object_id) where it is held
HOST = 'host'                      # a whole host's share
L3 = 'l3'                          # the L3 plugin's routers and floating IPs
ALL = 'all'                        # every host (a drainer's start)
KINDS = (PORT, MEMBER_JOIN, MEMBERS, NETWORK, SUBNET, SECURITY_GROUP, ADDRESS_GROUP,
         HOST, L3, ALL)


class PolluxJournal(model_base.BASEV2):
    __tablename__ = 'pollux_journal'

    id = sa.Column(sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                   primary_key=True, autoincrement=True)
    kind = sa.Column(sa.String(32), nullable=False)
    object_id = sa.Column(sa.String(255), nullable=True)
    host = sa.Column(sa.String(255), nullable=True)
    created_at = sa.Column(sa.DateTime, nullable=False)
    claimed_by = sa.Column(sa.String(255), nullable=True)
    claimed_at = sa.Column(sa.DateTime, nullable=True)


def record(context, kind, object_id=None, host=None):
    """Adds a row to the transaction `context` is in (a precommit's)."""
    assert kind in KINDS, kind
    context.session.add(PolluxJournal(kind=kind, object_id=object_id, host=host,
                                      created_at=_now()))


@db_api.retry_db_errors
def record_now(kind, object_id=None, host=None):
    """A row in a transaction of its own (where Neutron gives no precommit), on an
    admin context of its own: the caller's may be a request's, done with its
    transaction."""
    context = n_context.get_admin_context()
    with db_api.CONTEXT_WRITER.using(context):
        record(context, kind, object_id, host)


def ensure_table():
    """Creates the table where the schema lacks it (no migration ships yet)."""
    engine = db_api.get_context_manager().writer.get_engine()
    try:
        PolluxJournal.__table__.create(engine, checkfirst=True)
    except sa.exc.OperationalError:
        # Another server created it between the check and the create.
        if not sa.inspect(engine).has_table(PolluxJournal.__tablename__):
            raise


def _process_gone(claimed_by):
    """Whether a claim's drainer ran in a process of this host that is gone (a
    neutron-server killed while it held the claim, whose successor need not wait for
    the claim to expire). A process on another host counts as alive."""
    host, _, rest = claimed_by.partition(':')
    pid = rest.split(':', 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _now():
    return datetime.datetime.utcnow().replace(microsecond=0)


class Row(object):
    """A claimed row, detached from its session."""

    __slots__ = ('id', 'kind', 'object_id', 'host')

    def __init__(self, id, kind, object_id, host):
        self.id, self.kind, self.object_id, self.host = id, kind, object_id, host

    def what(self):
        return (self.kind, self.object_id, self.host)

    def __repr__(self):
        return 'journal row %d %s %s on %s' % (self.id, self.kind, self.object_id,
                                               self.host)


class Journal(object):
    """Drains the table: `reconcile(row)` writes a row's keys into etcd (raising when
    etcd fails); `context()` gives an admin context. With `reconcile_all`, the drainer
    queues an ALL row at its start, taken after the rows already there, under a claim
    like any row (so no other drainer writes beside it)."""

    def __init__(self, context, reconcile, reconcile_all=False, sleep=time.sleep,
                 clock=time.monotonic, name=None):
        self._context = context
        self._reconcile = reconcile
        self._sleep = sleep
        self._clock = clock
        self._name = name
        self._uuid = uuid.uuid4().hex[:8]
        self._wake = threading.Event()
        self._stop = False
        self._queue_all = reconcile_all
        #: Counted for the logs: rows written into etcd, etcd errors met.
        self.rows_done = 0
        self.etcd_errors = 0
        self._backoff = 0.0

    @property
    def name(self):
        """Who claims: host, process (the one the drainer runs in: Neutron may make it
        before forking) and the drainer."""
        return self._name or '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                                           self._uuid)

    # -- the table -----------------------------------------------------------------

    @db_api.retry_db_errors
    def claim(self):
        """The oldest rows, claimed; none while another drainer's claim on them lives."""
        ctx = self._context()
        now = _now()
        expired = now - datetime.timedelta(seconds=CLAIM_TIMEOUT)
        with db_api.CONTEXT_WRITER.using(ctx):
            rows = (ctx.session.query(PolluxJournal)
                    .order_by(PolluxJournal.id).limit(BATCH)
                    .with_for_update().all())
            for r in rows:
                if r.claimed_by not in (None, self.name) and \
                        r.claimed_at > expired and not _process_gone(r.claimed_by):
                    LOG.debug('pollux journal: %s drains; waiting', r.claimed_by)
                    return []
            for r in rows:
                r.claimed_by, r.claimed_at = self.name, now
            return [Row(r.id, r.kind, r.object_id, r.host) for r in rows]

    @db_api.retry_db_errors
    def _delete(self, ids):
        ctx = self._context()
        with db_api.CONTEXT_WRITER.using(ctx):
            (ctx.session.query(PolluxJournal)
             .filter(PolluxJournal.id.in_(ids),
                     PolluxJournal.claimed_by == self.name)
             .delete(synchronize_session=False))

    @db_api.retry_db_errors
    def _release(self):
        ctx = self._context()
        with db_api.CONTEXT_WRITER.using(ctx):
            (ctx.session.query(PolluxJournal)
             .filter(PolluxJournal.claimed_by == self.name)
             .update({'claimed_by': None, 'claimed_at': None},
                     synchronize_session=False))

    @db_api.retry_db_errors
    def _touch(self):
        ctx = self._context()
        with db_api.CONTEXT_WRITER.using(ctx):
            (ctx.session.query(PolluxJournal)
             .filter(PolluxJournal.claimed_by == self.name)
             .update({'claimed_at': _now()}, synchronize_session=False))

    @db_api.retry_db_errors
    def _add(self, kind):
        ctx = self._context()
        with db_api.CONTEXT_WRITER.using(ctx):
            record(ctx, kind)

    # -- draining ------------------------------------------------------------------

    def drain(self):
        """Takes rows until none is left (or another drainer has them); raises on an
        etcd error, with this drainer's claims released."""
        while True:
            rows = self.claim()
            if not rows:
                return
            touched = self._clock()
            try:
                for i, row in enumerate(rows):
                    # A later row naming the same thing recomputes it as well.
                    if row.what() not in {r.what() for r in rows[i + 1:]}:
                        self._reconcile(row)
                    self._delete([row.id])
                    self.rows_done += 1
                    if self._clock() - touched > CLAIM_TIMEOUT / 3:
                        self._touch()
                        touched = self._clock()
            except Exception:
                self._release()
                raise

    def step(self):
        """One round of draining. False when etcd (or the database) failed."""
        try:
            if self._queue_all:
                self._add(ALL)
                self._queue_all = False
            self.drain()
        except Exception as e:
            self.etcd_errors += 1
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, self._backoff * 2))
            # An etcd client error is expected while etcd is away; anything else is
            # logged with where it came from.
            LOG.warning('pollux journal: %s: %s (errors so far: %d); retrying in '
                        '%.2fs', type(e).__name__, e, self.etcd_errors, self._backoff,
                        exc_info=not isinstance(e, etcd_exc.Etcd3Exception))
            return False
        if self._backoff:
            LOG.info('pollux journal: etcd back, journal drained (%d rows written so '
                     'far)', self.rows_done)
        self._backoff = 0.0
        return True

    def wake(self):
        self._wake.set()

    def stop(self):
        self._stop = True
        self._wake.set()

    def run(self):
        LOG.info('pollux journal: drainer %s started', self.name)
        while not self._stop:
            # Cleared before the round: a wake during it makes the wait return at once.
            self._wake.clear()
            if not self.step():
                self._sleep(self._backoff)
                continue
            self._wake.wait(POLL)


_waker = None


def set_waker(wake):
    """The mechanism driver's: wakes this process's drainer."""
    global _waker
    _waker = wake


def wake():
    """After a commit that journaled rows outside the mechanism driver (the L3 plugin)."""
    if _waker is not None:
        _waker()


class JournalWorker(green_worker.GreenWorker):
    """Runs the main process's drainer in a green thread."""

    def __init__(self, drainer):
        super(JournalWorker, self).__init__('pollux journal', drainer.run, drainer.stop)
        self.drainer = drainer
