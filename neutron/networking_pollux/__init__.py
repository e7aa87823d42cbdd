"""Pollux back end for OpenStack Neutron: an ML2 mechanism driver writing each host's
share of the desired state into etcd, where the host's pollux-agent picks it up."""
