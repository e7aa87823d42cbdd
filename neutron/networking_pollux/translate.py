"""Neutron's resources as Pollux objects (control/src/model.rs), and the etcd keys they
live under. Pure functions: no Neutron, no etcd, so that they are tested on their own.

Every field Pollux enforces is carried over as Neutron has it, including those Pollux
refuses: polluxd refuses such an object with the field's path and the agent logs it,
rather than the driver dropping the field and letting the port forward as if it had been
honoured.

A rule's `remote_group_id` becomes a `remote_address_group_id` naming an address group of
the remote group's members (`members_group`): polluxd takes a remote group's members
from the ports of its own state, which are only its host's, while Neutron means every
port of the group on every host.
"""

#: Neutron's name for the tap device of a port (nova and os-vif use the same).
TAP_PREFIX = 'tap'
#: The binding profile key naming a kernel interface to attach over AF_XDP (the
#: namespace-as-VM setup of the tests; a real VM gets a tap).
PROFILE_AFXDP_INTERFACE = 'pollux_afxdp_interface'

NETWORK_TYPES = ('local', 'flat', 'vlan', 'vxlan')
#: The id of the address group that carries a security group's members.
MEMBERS_PREFIX = 'sg-members:'


def tap_name(port_id):
    return TAP_PREFIX + port_id[:11]


def host_prefix(prefix, host):
    return '%s/hosts/%s/' % (prefix.rstrip('/'), host)


def object_key(prefix, host, collection, obj_id):
    return host_prefix(prefix, host) + '%s/%s' % (collection, obj_id)


def agent_key(prefix, host):
    return '%s/agents/%s' % (prefix.rstrip('/'), host)


def binding(port):
    """The Pollux binding of a port: AF_XDP on the interface its binding profile names,
    else the tap device Neutron names for it."""
    profile = port.get('binding:profile') or {}
    interface = profile.get(PROFILE_AFXDP_INTERFACE)
    if interface:
        return {'driver': 'afxdp', 'interface': interface}
    return {'driver': 'tap', 'interface': tap_name(port['id'])}


def network(net, segment):
    """A network, with the one segment bound on the host (`segment`: Neutron's
    segment dict with network_type, physical_network, segmentation_id)."""
    obj = {
        'id': net['id'],
        'network_type': segment['network_type'],
        'admin_state_up': bool(net.get('admin_state_up', True)),
    }
    if net.get('name'):
        obj['name'] = net['name']
    if segment.get('physical_network'):
        obj['physical_network'] = segment['physical_network']
    if segment.get('segmentation_id') is not None:
        obj['segmentation_id'] = segment['segmentation_id']
    if net.get('mtu'):
        obj['mtu'] = net['mtu']
    if net.get('dns_domain'):
        obj['dns_domain'] = net['dns_domain'].rstrip('.')
    return obj


def subnet(sub):
    # ip_version 6 is not carried as a field: its cidr is, and polluxd refuses a cidr
    # that is not IPv4 with the field's path.
    obj = {
        'id': sub['id'],
        'network_id': sub['network_id'],
        'cidr': sub['cidr'],
        'enable_dhcp': bool(sub.get('enable_dhcp', True)),
        'dns_nameservers': list(sub.get('dns_nameservers') or []),
        'host_routes': [{'destination': r['destination'],
                         'nexthop': r['nexthop']}
                        for r in sub.get('host_routes') or []],
    }
    if sub.get('gateway_ip'):
        obj['gateway_ip'] = sub['gateway_ip']
    pools = sub.get('allocation_pools')
    if pools:
        obj['allocation_pools'] = [{'start': p['start'], 'end': p['end']}
                                   for p in pools]
    return obj


def port(p):
    obj = {
        'id': p['id'],
        'network_id': p['network_id'],
        'mac_address': p['mac_address'],
        'fixed_ips': [{'subnet_id': ip['subnet_id'],
                       'ip_address': ip['ip_address']}
                      for ip in p.get('fixed_ips') or []],
        'security_groups': list(p.get('security_groups') or []),
        'port_security_enabled': bool(p.get('port_security_enabled', True)),
        'allowed_address_pairs': [],
        'binding': binding(p),
    }
    for pair in p.get('allowed_address_pairs') or []:
        entry = {'ip_address': pair['ip_address']}
        if pair.get('mac_address'):
            entry['mac_address'] = pair['mac_address']
        obj['allowed_address_pairs'].append(entry)
    if p.get('dns_name'):
        obj['dns_name'] = p['dns_name']
    # The metadata proxy names the instance and its project to Nova by these
    # (X-Instance-ID, X-Tenant-ID) and answers 404 for a port without them.
    if p.get('device_id'):
        obj['device_id'] = p['device_id']
    project = p.get('project_id') or p.get('tenant_id')
    if project:
        obj['project_id'] = project
    opts = []
    for o in p.get('extra_dhcp_opts') or []:
        entry = {'opt_name': o['opt_name'], 'opt_value': o['opt_value']}
        if o.get('ip_version') is not None:
            entry['ip_version'] = o['ip_version']
        opts.append(entry)
    if opts:
        obj['extra_dhcp_opts'] = opts
    return obj


def port_is_served(p):
    """Whether a port belongs on its host's polluxd: bound to a host and
    administratively up (Pollux has no per-port admin state, so a port that is down is
    removed from its host, which stops its traffic)."""
    return bool(p.get('binding:host_id')) and bool(p.get('admin_state_up', True))


def members_group_id(sg_id):
    return MEMBERS_PREFIX + sg_id


def security_group(sg):
    """A Neutron security group with its `security_group_rules` as polluxd's group."""
    obj = {
        'id': sg['id'],
        'stateful': bool(sg.get('stateful', True)),
        'rules': [security_group_rule(r) for r in
                  sorted(sg.get('security_group_rules') or [], key=lambda r: r['id'])],
    }
    for field in ('name', 'description'):
        if sg.get(field):
            obj[field] = sg[field]
    return obj


def security_group_rule(r):
    obj = {'id': r['id'], 'direction': r['direction'],
           'ethertype': r.get('ethertype') or 'IPv4'}
    for field in ('protocol', 'port_range_min', 'port_range_max', 'remote_ip_prefix',
                  'remote_address_group_id', 'description'):
        if r.get(field) is not None and r.get(field) != '':
            obj[field] = r[field]
    if r.get('remote_group_id'):
        # Given with remote_address_group_id too, polluxd refuses the rule by its path
        # (Neutron refuses it before).
        if 'remote_address_group_id' in obj:
            obj['remote_group_id'] = r['remote_group_id']
        else:
            obj['remote_address_group_id'] = members_group_id(r['remote_group_id'])
    return obj


def members_group(sg_id, ports):
    """The address group of security group `sg_id`'s members: the fixed IPs and allowed
    address pairs of `ports` (every port of the group, on any host), as Neutron's
    firewalls match a remote group."""
    addresses = set()
    for p in ports:
        if sg_id in (p.get('security_groups') or []):
            addresses.update(member_addresses(p))
    return {'id': members_group_id(sg_id),
            'description': 'members of security group %s' % sg_id,
            'addresses': sorted(addresses)}


def address_group(ag):
    """A Neutron address group, as polluxd's (the same fields)."""
    obj = {'id': ag['id'], 'addresses': sorted(ag.get('addresses') or [])}
    for field in ('name', 'description'):
        if ag.get(field):
            obj[field] = ag[field]
    return obj


def remote_address_group_ids(sg):
    """The Neutron address groups a group's rules name."""
    return {r['remote_address_group_id'] for r in sg.get('security_group_rules') or []
            if r.get('remote_address_group_id')}


def remote_group_ids(sg):
    """The security groups a group's rules name as remote groups."""
    return {r['remote_group_id'] for r in sg.get('security_group_rules') or []
            if r.get('remote_group_id')}


def member_addresses(p):
    """What a port adds to the members of its groups."""
    return sorted({ip['ip_address'] for ip in p.get('fixed_ips') or []} |
                  {pair['ip_address'] for pair in p.get('allowed_address_pairs') or []})


def router_mac(router_ports):
    """The one MAC a Pollux router has on all its networks, from Neutron's router ports
    (interfaces and gateway), which have one each: the oldest port's, so that adding or
    removing another interface never changes the MAC the VMs have in their ARP caches."""
    if not router_ports:
        return None
    oldest = min(router_ports, key=lambda p: (p.get('created_at') or '', p['id']))
    return oldest['mac_address']


def router(r, interface_subnets, mac_address=None, runs_on=None, for_host=None):
    """A Neutron router, with the subnets of its interfaces (each at the subnet's
    gateway_ip: polluxd has no other address for an interface), as polluxd's router,
    written for `for_host`. `runs_on` is the host it is scheduled to: named as
    `binding_host_id` only to another host (which reaches it over the overlay by
    `mac_address`); on its own host the field stays out, which polluxd reads as "runs
    here" whatever name it knows itself by (the agent does not tell it its host name)."""
    obj = {
        'id': r['id'],
        'interfaces': sorted(interface_subnets),
        'routes': [{'destination': rt['destination'], 'nexthop': rt['nexthop']}
                   for rt in r.get('routes') or []],
    }
    if mac_address:
        obj['mac_address'] = mac_address
    if runs_on and for_host and runs_on != for_host:
        obj['binding_host_id'] = runs_on
    project = r.get('project_id') or r.get('tenant_id')
    if project:
        # The project whose metering labels count at its gateway.
        obj['project_id'] = project
    gateway = r.get('external_gateway_info')
    if gateway:
        ips = [ip['ip_address'] for ip in gateway.get('external_fixed_ips') or []
               if ':' not in ip['ip_address']]
        obj['external_gateway_info'] = {
            'network_id': gateway['network_id'],
            # None when Neutron gave the gateway no IPv4 address: polluxd refuses it
            # with the field's path rather than the driver routing without it.
            'external_fixed_ip': ips[0] if ips else None,
            'enable_snat': bool(gateway.get('enable_snat', True)),
        }
    return obj


def floating_ip(f):
    obj = {'id': f['id'], 'floating_ip_address': f['floating_ip_address']}
    if f.get('port_id'):
        obj['port_id'] = f['port_id']
        if f.get('fixed_ip_address'):
            obj['fixed_ip_address'] = f['fixed_ip_address']
    return obj
