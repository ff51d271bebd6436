"""Lowering passes: AST (checked) -> IR. One pass per module.

    endpoints.resolve_endpoints   declarations -> identities + ownership table
    matches.lower_pattern         SRC -> DST [l4] [l7] -> alternatives of ir.Match
    rules.expand_rules            allow/deny/rate -> prioritised acl entries
    routes.order_routes           routes -> route entries in Gateway API precedence
    routes.lower_limits           limits -> circuit breakers
"""
