"""A Serve app that fails to start is reported with its replica's exception, not Serve's summary line."""

from types import SimpleNamespace

from rayalign.serve.deploy import root_cause

TRACEBACK = """Traceback (most recent call last):
  File "replica.py", line 1867, in initialize
    await self._user_callable_wrapper.initialize_callable()
pydantic_core._pydantic_core.ValidationError: 1 validation error for StructuredOutputsConfig
  Value error, disable_any_whitespace is only supported for xgrammar and guidance backends.
    For further information visit https://errors.pydantic.dev/2.14/v/value_error"""


def test_the_replicas_exception_is_the_cause():
    app = SimpleNamespace(message="Failed to update the deployments ['OpenAIServer'].",
                          deployments={"OpenAIServer": SimpleNamespace(message=TRACEBACK)})
    assert root_cause(app) == ("pydantic_core._pydantic_core.ValidationError: 1 validation error for "
                               "StructuredOutputsConfig")
    bare = SimpleNamespace(message="Failed to update the deployments ['OpenAIServer'].",
                           deployments={"OpenAIServer": SimpleNamespace(message="")})
    assert root_cause(bare) == "Failed to update the deployments ['OpenAIServer']."
