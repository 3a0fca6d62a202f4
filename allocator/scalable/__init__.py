"""The scalable path of ``divide``: seats fixed first, divisible goods by one LP.

* allocator.scalable.path — ``divide_fixed_seats``, the path from start to finish (its
  docstring is the overview);
* allocator.scalable.data — the instance as numpy arrays, and one seat assignment's constants;
* allocator.scalable.fractional — the fractional relaxation: seats to start from, and the
  bound that proves when no allocation is fair;
* allocator.scalable.share_lp — the lexicographic LP over the divisible shares;
* allocator.scalable.moves — bounds on a seat move's effect, without a solve;
* allocator.scalable.search — the seat search around the share LP.

Nothing is imported here; PuLP is imported by none of these modules.
"""
