"""Identity and access: enrollment, per-agent credentials, operators and roles, audit."""
