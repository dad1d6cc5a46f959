"""Offline evaluation and onboarding analytics: replay / off-policy evaluation of candidate policies on
the decision log, exports (Parquet, VW DSJSON, OBP), funnel/retention reports and experiment reports.

Everything here reads the server's SQLite database (or an exported Parquet file) read-only; nothing here
runs inside the gRPC server.
"""
