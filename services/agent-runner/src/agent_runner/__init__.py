"""The agent runner: pulls task assignments from the work queue and runs them as agentkit loops,
recording every step as task events. Start more processes to run more tasks at once.
"""
