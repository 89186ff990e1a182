"""Sampling: the :class:`~vigil.agent.sampling.sampler.Sampler` facade over one module per
source (CPU, memory, disks, network, sensors, processes, services, probes, paths, uptime,
the agent itself), with the rate maths pure in ``rates``."""
