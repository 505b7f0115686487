"""Processes a running lab owns: the agent (HTTP servers, supervision) and the tunnel daemons."""
