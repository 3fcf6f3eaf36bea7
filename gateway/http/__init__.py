"""HTTP layer: routes (parse → call → serialise) and the one error handler."""
