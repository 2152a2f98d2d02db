"""Read template.yaml: the single source of truth for tables, queues and event sources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that understands CloudFormation's short tags (!Ref, !GetAtt, !Sub, ...)."""


def _cfn_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node for !{tag_suffix}", node.start_mark)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open() as f:
        template: dict[str, Any] = yaml.load(f, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    return template


@dataclass(frozen=True)
class SqsEventSource:
    """One SQS event source mapping of a function, as the template declares it."""

    function: str
    handler: str
    queue: str
    batch_size: int
    batching_window_s: float
    report_batch_item_failures: bool
    maximum_concurrency: int


def resources_of_type(template: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == type_name}


def parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    """Each parameter's Default, as a string (what CloudFormation passes when none is given)."""
    return {name: str(spec.get("Default", "")) for name, spec in template.get("Parameters", {}).items()}


def condition_holds(template: dict[str, Any], name: str, parameters: Mapping[str, str]) -> bool:
    """A template condition, for the one form it uses: ``!Equals [!Ref Parameter, value]``."""
    spec = template.get("Conditions", {})[name]
    left, right = spec["Fn::Equals"]
    if not (isinstance(left, dict) and set(left) == {"Ref"}):
        raise ValueError(f"condition {name}: only !Equals [!Ref Parameter, value] is understood")
    return str(parameters[left["Ref"]]) == str(right)


def resolve_if(template: dict[str, Any], value: Any, parameters: Mapping[str, str]) -> Any:
    """``!If [Condition, then, else]`` resolved against the parameters; any other value as it is."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        name, then, otherwise = value["Fn::If"]
        return then if condition_holds(template, name, parameters) else otherwise
    return value


def sqs_event_sources(template: dict[str, Any], parameters: Mapping[str, str] | None = None) -> list[SqsEventSource]:
    """The SQS event sources, with ``!If`` settings resolved (``parameters``: the template's Defaults if None)."""
    if parameters is None:
        parameters = parameter_defaults(template)
    sources = []
    for name, fn in resources_of_type(template, "AWS::Serverless::Function").items():
        props = fn["Properties"]
        for event in props.get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            ev = event["Properties"]
            queue_ref = ev["Queue"]
            queue = queue_ref["Fn::GetAtt"][0] if "Fn::GetAtt" in queue_ref else queue_ref["Ref"]
            sources.append(
                SqsEventSource(
                    function=name,
                    handler=props["Handler"],
                    queue=queue,
                    batch_size=int(resolve_if(template, ev.get("BatchSize", 10), parameters)),
                    batching_window_s=float(ev.get("MaximumBatchingWindowInSeconds", 0)),
                    report_batch_item_failures="ReportBatchItemFailures" in ev.get("FunctionResponseTypes", []),
                    maximum_concurrency=int(
                        resolve_if(template, ev.get("ScalingConfig", {}).get("MaximumConcurrency", 5), parameters)
                    ),
                )
            )
    return sources


def function_environment(template: dict[str, Any]) -> dict[str, Any]:
    """Globals.Function.Environment.Variables: env var name -> template value (often a Ref)."""
    variables: dict[str, Any] = (
        template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    )
    return variables


@dataclass(frozen=True)
class ScheduleSource:
    """A function run on a fixed rate, from a Schedule event's ``rate(N unit)``."""

    function: str
    handler: str
    every_s: float


_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


def schedule_sources(template: dict[str, Any]) -> list[ScheduleSource]:
    sources = []
    for name, fn in resources_of_type(template, "AWS::Serverless::Function").items():
        props = fn["Properties"]
        for event in props.get("Events", {}).values():
            if event["Type"] != "Schedule":
                continue
            expression = str(event["Properties"]["Schedule"])
            if not (expression.startswith("rate(") and expression.endswith(")")):
                raise ValueError(f"{name}: only rate() schedules run locally, not {expression!r}")
            amount, unit = expression[5:-1].split()
            sources.append(ScheduleSource(function=name, handler=props["Handler"], every_s=int(amount) * _UNITS[unit]))
    return sources
