"""The exact path of ``divide``: one MILP decides every good and every share at once.

* allocator.exact.milp — the fair-division MILP with lazy envy rows (the only module that
  imports PuLP);
* allocator.exact.lambda_search — the smallest relaxation λ for which the MILP is feasible.

Nothing is imported here: PuLP loads on the first exact solve, not with the package.
"""
