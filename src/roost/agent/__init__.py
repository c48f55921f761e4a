"""The agent: a daemon on each host that follows a release channel.

``daemon`` holds the loop (:class:`Agent`, :class:`AgentConfig`); ``state``
the files it keeps under DEST (:class:`AgentState`, :func:`read_status`).
"""

from roost.agent.daemon import Agent, AgentConfig
from roost.agent.state import STATE_FILE, AgentState, read_status

__all__ = ["STATE_FILE", "Agent", "AgentConfig", "AgentState", "read_status"]
