"""The control plane's services: keyword-only functions over a SQLAlchemy session.

Routes stay thin (parse, call one service, shape the reply); services hold the rules and
raise only :mod:`api.errors`. Tenant-facing services take the caller's tenant id and treat
every row outside it as absent, which is how a tenant is kept from seeing another's data.
"""
