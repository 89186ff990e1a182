"""The service-desk console: server-rendered pages over the desk (queue, incidents,
problems, hosts, service catalog, service quality), readable without JavaScript.

``routes.setup_console`` wires it into the collector app; ``docs/console.md`` describes
the pages, login and roles.
"""
