"""The journal on a real database (SQLite in a temporary file, through neutron-lib's
engine facade as Neutron uses it), with the mechanism driver's fakes of etcd and the
core plugin: rows taken in order, deleted only once etcd took their keys, kept and
retried while etcd fails, drained by the next process, claimed by one drainer at once.
Run: /usr/bin/python3 -m unittest discover -s neutron -t neutron"""

import datetime
import os
import shutil
import socket
import subprocess
import tempfile
import unittest

from etcd3gw import exceptions as etcd_exc
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api

from networking_pollux import journal
from networking_pollux.tests import test_mech_driver as fakes

_DIR = tempfile.mkdtemp(prefix='pollux-journal-test-')


def setUpModule():
    db_api.get_context_manager().configure(
        connection='sqlite:///' + os.path.join(_DIR, 'neutron.sqlite'))
    journal.ensure_table()


def tearDownModule():
    shutil.rmtree(_DIR, ignore_errors=True)


class FlakyEtcd(fakes.FakeEtcd):
    """etcd that refuses every request while `down`."""

    def __init__(self):
        super(FlakyEtcd, self).__init__()
        self.down = False

    def _check(self):
        if self.down:
            raise etcd_exc.ConnectionFailedError('etcd is down (test)')

    def put(self, key, value, lease=None):
        self._check()
        super(FlakyEtcd, self).put(key, value, lease)

    def get(self, key, **kw):
        self._check()
        return super(FlakyEtcd, self).get(key, **kw)

    def get_prefix(self, prefix, **kw):
        self._check()
        return super(FlakyEtcd, self).get_prefix(prefix, **kw)

    def delete(self, key, **kw):
        self._check()
        return super(FlakyEtcd, self).delete(key, **kw)


def rows():
    ctx = n_context.get_admin_context()
    with db_api.CONTEXT_READER.using(ctx):
        return [(r.kind, r.object_id, r.host, r.claimed_by)
                for r in ctx.session.query(journal.PolluxJournal)
                .order_by(journal.PolluxJournal.id)]


def add(kind, object_id=None, host=None):
    ctx = n_context.get_admin_context()
    with db_api.CONTEXT_WRITER.using(ctx):
        journal.record(ctx, kind, object_id, host)


class JournalCase(unittest.TestCase):
    def setUp(self):
        ctx = n_context.get_admin_context()
        with db_api.CONTEXT_WRITER.using(ctx):
            ctx.session.query(journal.PolluxJournal).delete()
        self.done = []
        self.fail_next = 0

    def reconcile(self, row):
        if self.fail_next:
            self.fail_next -= 1
            raise etcd_exc.ConnectionFailedError('etcd is down (test)')
        # The row is still in the table while its keys are written.
        self.assertIn((row.kind, row.object_id, row.host), [r[:3] for r in rows()])
        self.done.append(row.what())

    def drainer(self, name, reconcile_all=False):
        return journal.Journal(n_context.get_admin_context, self.reconcile,
                               reconcile_all=reconcile_all, sleep=lambda s: None,
                               name=name)


class JournalTest(JournalCase):
    def test_rows_in_order_then_every_host_once(self):
        add(journal.PORT, 'p1', 'h1')
        add(journal.NETWORK, 'n1')
        add(journal.SECURITY_GROUP, 'sg-1')
        d = self.drainer('one', reconcile_all=True)
        self.assertTrue(d.step())
        self.assertEqual(self.done, [('port', 'p1', 'h1'), ('network', 'n1', None),
                                     ('security_group', 'sg-1', None),
                                     ('all', None, None)])
        self.assertEqual(rows(), [])
        self.assertEqual(d.rows_done, 4)
        add(journal.HOST, host='h2')
        self.assertTrue(d.step())
        self.assertEqual(self.done[4:], [('host', None, 'h2')],
                         'every host is reconciled once per drainer')

    def test_a_row_named_again_later_is_recomputed_once(self):
        for _ in range(3):
            add(journal.PORT, 'p1', 'h1')
        add(journal.NETWORK, 'n1')
        self.drainer('one').step()
        # Taken where it was named last.
        self.assertEqual(self.done, [('port', 'p1', 'h1'), ('network', 'n1', None)])
        self.assertEqual(rows(), [])

    def test_an_etcd_error_keeps_the_row_and_backs_off(self):
        add(journal.PORT, 'p1', 'h1')
        add(journal.PORT, 'p2', 'h1')
        d = self.drainer('one')
        self.fail_next = 1
        self.assertFalse(d.step())
        self.assertEqual((d.etcd_errors, d._backoff), (1, journal.BACKOFF_FIRST))
        # Both rows stay, unclaimed: another drainer may take them.
        self.assertEqual(rows(), [('port', 'p1', 'h1', None), ('port', 'p2', 'h1', None)])
        self.fail_next = 10
        for _ in range(5):
            self.assertFalse(d.step())
        self.assertEqual(d._backoff, journal.BACKOFF_MAX)
        self.assertEqual(d.etcd_errors, 6)
        self.fail_next = 0
        self.assertTrue(d.step())
        self.assertEqual(self.done, [('port', 'p1', 'h1'), ('port', 'p2', 'h1')])
        self.assertEqual((rows(), d._backoff), ([], 0.0))

    def test_a_failure_midway_keeps_the_rest_in_order(self):
        add(journal.PORT, 'p1', 'h1')
        add(journal.PORT, 'p2', 'h1')
        add(journal.PORT, 'p3', 'h1')
        d = self.drainer('one')
        real = self.reconcile

        def second_fails(row):
            if row.object_id == 'p2' and not getattr(self, 'failed', False):
                self.failed = True
                raise etcd_exc.ConnectionFailedError('etcd went away (test)')
            real(row)
        d._reconcile = second_fails
        self.assertFalse(d.step())
        self.assertEqual(self.done, [('port', 'p1', 'h1')])
        self.assertEqual([r[1] for r in rows()], ['p2', 'p3'])
        self.assertTrue(d.step())
        self.assertEqual([w[1] for w in self.done], ['p1', 'p2', 'p3'])

    def test_one_drainer_at_a_time_and_a_dead_ones_claim_expires(self):
        add(journal.PORT, 'p1', 'h1')
        first, second = self.drainer('first'), self.drainer('second')
        self.assertEqual(len(first.claim()), 1)
        add(journal.PORT, 'p2', 'h1')
        # first holds the oldest row: second takes nothing, not even the newer one.
        self.assertEqual(second.claim(), [])
        self.assertTrue(second.step())
        self.assertEqual(self.done, [])
        # first died holding its claim: once it expires, second drains in order.
        ctx = n_context.get_admin_context()
        old = datetime.datetime.utcnow() - datetime.timedelta(
            seconds=journal.CLAIM_TIMEOUT + 1)
        with db_api.CONTEXT_WRITER.using(ctx):
            ctx.session.query(journal.PolluxJournal).update({'claimed_at': old})
        self.assertTrue(second.step())
        self.assertEqual(self.done, [('port', 'p1', 'h1'), ('port', 'p2', 'h1')])
        self.assertEqual(rows(), [])

    def test_a_gone_process_of_this_host_leaves_its_claim_at_once(self):
        add(journal.PORT, 'p1', 'h1')
        gone = subprocess.Popen(['true'])
        gone.wait()
        dead = self.drainer('%s:%d:killed' % (socket.gethostname(), gone.pid))
        self.assertEqual(len(dead.claim()), 1)
        # Another host's process is taken for alive, as this one is.
        for claimer in ('elsewhere:%d:x' % gone.pid,
                        '%s:%d:x' % (socket.gethostname(), os.getpid())):
            ctx = n_context.get_admin_context()
            with db_api.CONTEXT_WRITER.using(ctx):
                ctx.session.query(journal.PolluxJournal).update(
                    {'claimed_by': claimer})
            self.assertEqual(self.drainer('next').claim(), [], claimer)
        ctx = n_context.get_admin_context()
        with db_api.CONTEXT_WRITER.using(ctx):
            ctx.session.query(journal.PolluxJournal).update(
                {'claimed_by': dead.name})
        self.assertTrue(self.drainer('next').step())
        self.assertEqual(self.done, [('port', 'p1', 'h1')])


class DriverJournalTest(fakes.DriverCase):
    """The mechanism driver's rows in the database, drained into a flaky etcd."""

    def setUp(self):
        super(DriverJournalTest, self).setUp()
        JournalCase.setUp(self)
        self.driver.etcd = self.etcd = FlakyEtcd()
        self.driver._record = journal.record
        self.driver._wake = lambda: None

    def drainer(self, name):
        return journal.Journal(n_context.get_admin_context, self.driver._reconcile_row,
                               reconcile_all=True, sleep=lambda s: None, name=name)

    def update_port(self, port, original):
        ctx = fakes.FakePortContext(port, original)
        ctx._plugin_context = n_context.get_admin_context()
        with db_api.CONTEXT_WRITER.using(ctx._plugin_context):
            self.driver.update_port_precommit(ctx)
        self.driver.update_port_postcommit(ctx)

    def test_a_change_made_while_etcd_is_down_survives_a_restart(self):
        port = fakes.neutron_port('p1')
        self.plugin.ports['p1'] = port
        self.etcd.down = True
        self.update_port(port, None)
        self.assertEqual(rows(), [('port', 'p1', 'h1', None)])
        first = self.drainer('first')
        self.assertFalse(first.step())
        self.assertEqual(self.keys('h1'), [])
        # Kept, unclaimed, behind them the reconcile of every host the drainer queued.
        self.assertEqual(rows(), [('port', 'p1', 'h1', None), ('all', None, None, None)])
        # neutron-server restarts (the first drainer is gone) and etcd comes back:
        # the next process's drainer takes the row left behind.
        del first
        self.etcd.down = False
        second = self.drainer('second')
        self.assertTrue(second.step())
        self.assertEqual(self.keys('h1'),
                         ['networks/' + fakes.NET, 'ports/p1', 'subnets/' + fakes.SUB])
        self.assertEqual(rows(), [])

    def test_the_full_reconcile_repairs_what_no_row_names(self):
        p1, p2 = fakes.neutron_port('p1'), fakes.neutron_port('p2')
        self.plugin.ports.update(p1=p1, p2=p2)
        self.update_port(p1, None)
        self.update_port(p2, None)
        self.drainer('first').step()
        self.assertIn('ports/p2', self.keys('h1'))
        # Lost without a row (made before the journal existed): p2 went away and a
        # key of a port Neutron never had is left on h3.
        del self.plugin.ports['p2']
        self.etcd.put('/pollux/hosts/h3/ports/ghost', '{"id": "ghost", '
                      '"network_id": "%s", "security_groups": []}' % fakes.NET)
        self.drainer('after a restart').step()
        self.assertEqual(self.keys('h1'),
                         ['networks/' + fakes.NET, 'ports/p1', 'subnets/' + fakes.SUB])
        self.assertEqual(self.keys('h3'), [])


if __name__ == '__main__':
    unittest.main()
