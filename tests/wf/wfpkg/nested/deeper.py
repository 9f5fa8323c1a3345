from orchd import Target, done, init, workflow


@workflow("In a nested subpackage", target=Target.SYSTEM)
def in_a_nested_package():  # type: ignore[no-untyped-def]
    return init >> done
