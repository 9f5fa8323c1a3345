from orchd import Target, done, init, workflow


@workflow("In a submodule", target=Target.SYSTEM)
def in_a_submodule():  # type: ignore[no-untyped-def]
    return init >> done
