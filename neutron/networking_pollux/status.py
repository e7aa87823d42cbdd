"""Port status back from the hosts: pollux-agent keeps `<prefix>/status/<host>/ports/<id>`
while its polluxd holds the port; a worker in neutron-server watches those keys and sets
the port ACTIVE when its key appears, DOWN when it goes (the port was removed from the
host, or polluxd refused it). The driver binds a port DOWN, so ACTIVE means forwarding.
After a lost watch (etcd away) the keys as they are set their ports ACTIVE and a port
Pollux bound that is ACTIVE without its key DOWN: its key went while nothing watched.
"""

import json
import time

from etcd3gw import exceptions as etcd_exc
from etcd3gw.utils import _decode
from etcd3gw.utils import _encode
from etcd3gw.utils import _increment_last_byte
from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.plugins import directory
from oslo_log import log as logging
import requests

from networking_pollux import green_worker

LOG = logging.getLogger(__name__)

#: Seconds between attempts while etcd is away.
RETRY = 1.0


def status_prefix(prefix):
    return '%s/status/' % prefix.rstrip('/')


def parse_status_key(prefix, key):
    """(host, port id) of a status key; None for any other key."""
    rest = key[len(status_prefix(prefix)):] if key.startswith(status_prefix(prefix)) \
        else None
    parts = rest.split('/') if rest else []
    if len(parts) != 3 or parts[1] != 'ports' or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


class PortStatus(object):
    """Applies status keys to Neutron's ports."""

    def __init__(self, etcd, prefix, plugin=directory.get_plugin):
        self.etcd = etcd
        self.prefix = prefix
        self._plugin = plugin

    def apply(self, key, present):
        parsed = parse_status_key(self.prefix, key)
        if parsed is None:
            return
        host, port_id = parsed
        status = n_const.PORT_STATUS_ACTIVE if present else n_const.PORT_STATUS_DOWN
        self._plugin().update_port_status(n_context.get_admin_context(), port_id,
                                          status, host=host)
        LOG.debug('pollux: port %s on %s: %s', port_id, host, status)

    def resync(self, keys):
        """The keys as they are (`keys`, after the watch was set up): their ports
        ACTIVE, and a port Pollux bound that Neutron has ACTIVE without its key DOWN
        (its key went while no watch was there to see it: etcd was away)."""
        present = set()
        for key in keys:
            parsed = parse_status_key(self.prefix, key)
            if parsed is not None:
                present.add(parsed)
                self.apply(key, True)
        admin = n_context.get_admin_context()
        for port in self._plugin().get_ports(
                admin, filters={'status': [n_const.PORT_STATUS_ACTIVE]}):
            host = port.get('binding:host_id')
            if 'pollux_binding' in (port.get('binding:vif_details') or {}) and \
                    (host, port['id']) not in present:
                self._plugin().update_port_status(admin, port['id'],
                                                  n_const.PORT_STATUS_DOWN, host=host)
                LOG.debug('pollux: port %s on %s: no status key, DOWN', port['id'],
                          host)

    def run(self):
        """Watches the status keys for good: after the watch is set up, the keys as
        they are (resync), then every change (a key seen twice is applied twice,
        harmlessly); when the watch's stream ends (etcd went away), again."""
        while True:
            response = None
            try:
                prefix = status_prefix(self.prefix)
                # etcd3gw's watch_prefix never ends its iterator when the stream does,
                # so a lost watch would go unnoticed: the stream is read here.
                response = self.etcd.session.post(
                    self.etcd.get_url('/watch'), stream=True, json={'create_request': {
                        'key': _encode(prefix),
                        'range_end': _encode(_increment_last_byte(prefix))}})
                payloads = watch_payloads(response.iter_content(chunk_size=None))
                created = next(payloads, None)
                if not created or not created.get('result', {}).get('created'):
                    raise RuntimeError('etcd did not create the watch: %s' % created)
                self.resync([_text(meta['key']) for _value, meta in
                             self.etcd.get_prefix(prefix)])
                for payload in payloads:
                    for event in payload.get('result', {}).get('events', []):
                        self.apply(_text(_decode(event['kv']['key'])),
                                   event.get('type') != 'DELETE')
                LOG.warning('pollux: the port status watch ended (etcd away?); '
                            'watching again')
            except (etcd_exc.Etcd3Exception,
                    requests.exceptions.RequestException) as e:
                LOG.warning('pollux: watching port status in etcd: %s: %s; retrying',
                            type(e).__name__, e)
            except Exception:
                LOG.exception('pollux: watching port status in etcd; retrying')
            finally:
                if response is not None:
                    response.close()
            time.sleep(RETRY)


def watch_payloads(chunks):
    """The JSON messages of a watch's stream (one a line) from its chunks."""
    pending = b''
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b'\n')
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


def _text(b):
    return b.decode() if isinstance(b, bytes) else b


class PortStatusWorker(green_worker.GreenWorker):
    """Runs the watch in a green thread of one neutron-server process."""

    def __init__(self, port_status):
        super(PortStatusWorker, self).__init__('pollux port status', port_status.run)
        self.port_status = port_status
