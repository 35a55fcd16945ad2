"""Likelihood of a model: the probability-flow ODE log-likelihood and bits/dim with the
Skilling-Hutchinson trace estimator (``pf_ode``; Score SDE App. D.2).

Imports: torch, ``scorelab.models``, ``scorelab.sampling`` (the ODE solvers) and
``scorelab.util.checks`` only (math core).
"""
