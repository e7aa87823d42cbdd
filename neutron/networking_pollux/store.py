"""The etcd side shared by the mechanism driver and the L3 service plugin: their options,
the connection, and each host's keys (put, delete, what a host holds, which hosts hold
an object). Both write under the same host prefixes, and each keeps a network on a host
while the other still needs it there (a served port, a router's interface or gateway).
"""

import json

from etcd3gw.client import Etcd3Client
from etcd3gw.utils import _encode
from etcd3gw.utils import _increment_last_byte
from neutron_lib.db import api as db_api
from oslo_config import cfg
from oslo_log import log as logging

from networking_pollux import translate

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt('etcd_host', default='127.0.0.1', help='etcd host (gRPC gateway)'),
    cfg.PortOpt('etcd_port', default=2379, help='etcd client port'),
    cfg.StrOpt('etcd_api_path', default='/v3/',
               help="etcd's HTTP gateway path (/v3/ from etcd 3.4)"),
    cfg.StrOpt('prefix', default='/pollux', help='key prefix shared with the agents'),
    cfg.StrOpt('l3_host',
               help="the host (an agent's --host) whose polluxd runs every router and "
                    "floating IP of the L3 service plugin 'pollux'"),
]
cfg.CONF.register_opts(OPTS, 'ml2_pollux')


def _text(b):
    return b.decode() if isinstance(b, bytes) else b


class HostKeys(object):
    """Needs `_plugin()` (the core plugin) from the class it is mixed into."""

    def connect(self):
        conf = cfg.CONF.ml2_pollux
        self.prefix = conf.prefix
        self.etcd = Etcd3Client(host=conf.etcd_host, port=conf.etcd_port,
                                api_path=conf.etcd_api_path)

    @staticmethod
    def _reading(plugin_context):
        """A reader transaction for lookups that expect one (the security group
        bindings): without it the session opens one that is never closed, which on
        SQLite locks every later write out."""
        return db_api.CONTEXT_READER.using(plugin_context)

    def _put(self, host, collection, obj):
        key = translate.object_key(self.prefix, host, collection, obj['id'])
        self.etcd.put(key, json.dumps(obj, sort_keys=True))
        LOG.debug('pollux: put %s', key)

    def _put_changed(self, host, collection, obj, held):
        """Puts `obj` unless `held` (id -> JSON text) has it as it is."""
        if held.get(obj['id']) != json.dumps(obj, sort_keys=True):
            self._put(host, collection, obj)

    def _put_if_changed(self, host, collection, obj):
        """Puts `obj` unless its key holds it as it is."""
        key = translate.object_key(self.prefix, host, collection, obj['id'])
        held = self.etcd.get(key)
        if not held or _text(held[0]) != json.dumps(obj, sort_keys=True):
            self._put(host, collection, obj)

    def _delete(self, host, collection, obj_id):
        self.etcd.delete(translate.object_key(self.prefix, host, collection, obj_id))
        LOG.debug('pollux: delete %s/%s on %s', collection, obj_id, host)

    def _held(self, host, collection):
        """The objects of a collection a host's keys hold: id -> their JSON text."""
        prefix = translate.host_prefix(self.prefix, host) + collection + '/'
        return {_text(meta['key'])[len(prefix):]: _text(value)
                for value, meta in self.etcd.get_prefix(prefix)}

    def _hosts_with(self, collection, obj_id):
        """Every host whose keys hold this object."""
        hosts_prefix = self.prefix.rstrip('/') + '/hosts/'
        suffix = '/%s/%s' % (collection, obj_id)
        hosts = set()
        for key in self._keys(hosts_prefix):
            if key.endswith(suffix):
                hosts.add(key[len(hosts_prefix):-len(suffix)])
        return hosts

    def _keys(self, prefix):
        """The keys under `prefix`, without their values (a scan of every host's keys
        stays small)."""
        found = self.etcd.get(prefix, metadata=True, keys_only=True,
                              range_end=_encode(_increment_last_byte(prefix)))
        return [_text(meta['key']) for _value, meta in found]

    def _agent_alive(self, host):
        return bool(self.etcd.get(translate.agent_key(self.prefix, host)))

    def _routed_networks(self, host):
        """The networks a host's routers have an interface or their gateway on."""
        subnets = {sid: json.loads(text)['network_id']
                   for sid, text in self._held(host, 'subnets').items()}
        networks = set()
        for text in self._held(host, 'routers').values():
            router = json.loads(text)
            networks.update(subnets[s] for s in router.get('interfaces', [])
                            if s in subnets)
            gateway = router.get('external_gateway_info')
            if gateway:
                networks.add(gateway['network_id'])
        return networks

    def _network_object(self, plugin_context, network_id, segment=None):
        net = self._plugin().get_network(plugin_context, network_id)
        if segment is None:
            segment = {
                'network_type': net.get('provider:network_type'),
                'physical_network': net.get('provider:physical_network'),
                'segmentation_id': net.get('provider:segmentation_id'),
            }
        return translate.network(net, segment)
