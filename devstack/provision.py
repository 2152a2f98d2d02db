"""Create the template's tables and queues on a moto server, as CloudFormation would."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devstack.template import function_environment, parameter_defaults, resources_of_type

# Table properties that moto's CreateTable takes as they are in the template.
_TABLE_KEYS = ("KeySchema", "AttributeDefinitions", "BillingMode", "GlobalSecondaryIndexes", "LocalSecondaryIndexes")
# Queue properties that are SQS queue attributes of the same name.
_QUEUE_ATTRIBUTES = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "MaximumMessageSize",
    "SqsManagedSseEnabled",
)


@dataclass
class Stack:
    """What provisioning made: physical names and addresses by logical id."""

    parameters: dict[str, str]
    tables: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    queue_arns: dict[str, str] = field(default_factory=dict)

    def function_environment(self, template: dict[str, Any]) -> dict[str, str]:
        """The environment template.yaml gives the functions, resolved against this stack, plus
        what only the local stack sets (LOCAL_ONLY_ENVIRONMENT)."""
        resolved = {name: str(self.resolve(value)) for name, value in function_environment(template).items()}
        return resolved | LOCAL_ONLY_ENVIRONMENT

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and "Ref" in value:
            ref = value["Ref"]
            if ref in self.parameters:
                return self.parameters[ref]
            if ref in self.tables:
                return self.tables[ref]
            if ref in self.buckets:
                return self.buckets[ref]
            if ref in self.queue_urls:
                return self.queue_urls[ref]
            raise KeyError(f"cannot resolve !Ref {ref}")
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            name, attr = value["Fn::GetAtt"]
            if attr == "Arn" and name in self.queue_arns:
                return self.queue_arns[name]
            if attr == "QueueName" and name in self.queue_urls:
                return self.queue_urls[name].rsplit("/", 1)[-1]
            raise KeyError(f"cannot resolve !GetAtt {name}.{attr}")
        return value


def parameters(template: dict[str, Any], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parameter values: an environment variable that the template maps to a parameter wins over its Default."""
    env = os.environ if env is None else env
    values = parameter_defaults(template)
    for var, value in function_environment(template).items():
        if isinstance(value, dict) and value.get("Ref") in values and env.get(var, "") != "":
            values[value["Ref"]] = env[var]
    return values


# Settings whose AWS value (the Settings default) cannot work locally.
LOCAL_ONLY_ENVIRONMENT = {
    # A presigned URL would point at moto on the local stack's loopback, which only this
    # machine reaches: the app serves recordings itself.
    "RECORDING_DOWNLOAD": "inline",
}


def bucket_name(logical_id: str) -> str:
    """The local name of a template bucket: S3 names are lower case (CloudFormation generates them on AWS)."""
    return logical_id.lower()


def provision(
    template: dict[str, Any], dynamodb: Any, sqs: Any, env: Mapping[str, str] | None = None, *, s3: Any = None
) -> Stack:
    stack = Stack(parameters=parameters(template, env))
    buckets = resources_of_type(template, "AWS::S3::Bucket")
    if buckets and s3 is None:
        raise ValueError(f"the template has buckets ({sorted(buckets)}): pass an S3 client")
    for name, res in buckets.items():
        stack.buckets[name] = bucket_name(name)
        _create_bucket(s3, stack, bucket_name(name), res.get("Properties", {}))
    for name, res in resources_of_type(template, "AWS::DynamoDB::Table").items():
        props = res["Properties"]
        kwargs = {key: props[key] for key in _TABLE_KEYS if key in props}
        dynamodb.create_table(TableName=name, **kwargs)
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            # moto keeps it (DescribeTimeToLive, the usage meter) but does not expire items:
            # devstack.ttl does that.
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        stack.tables[name] = name
    pending = dict(resources_of_type(template, "AWS::SQS::Queue"))
    while pending:
        # A queue's redrive policy names its dead-letter queue, so create that one first.
        ready = {n: r for n, r in pending.items() if _redrive_target(r) in (None, *stack.queue_arns)}
        if not ready:
            raise ValueError(f"queues with unresolvable redrive policies: {sorted(pending)}")
        for name, res in ready.items():
            props = res.get("Properties", {})
            attributes = {
                key: str(stack.resolve(props[key])).lower()
                if isinstance(props[key], bool)
                else str(stack.resolve(props[key]))
                for key in _QUEUE_ATTRIBUTES
                if key in props
            }
            if "RedrivePolicy" in props:
                policy = props["RedrivePolicy"]
                attributes["RedrivePolicy"] = json.dumps(
                    {
                        "deadLetterTargetArn": stack.resolve(policy["deadLetterTargetArn"]),
                        "maxReceiveCount": int(stack.resolve(policy["maxReceiveCount"])),
                    }
                )
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            stack.queue_urls[name], stack.queue_arns[name] = url, arn
            del pending[name]
    return stack


def _redrive_target(resource: dict[str, Any]) -> str | None:
    policy = resource.get("Properties", {}).get("RedrivePolicy")
    if not policy:
        return None
    target = policy["deadLetterTargetArn"]
    return str(target["Fn::GetAtt"][0]) if isinstance(target, dict) and "Fn::GetAtt" in target else str(target)


def _create_bucket(s3: Any, stack: Stack, name: str, props: dict[str, Any]) -> None:
    """The bucket, with the template's encryption, public access block and expiry, as CloudFormation would."""
    s3.create_bucket(Bucket=name)
    if "BucketEncryption" in props:
        # CloudFormation's ServerSideEncryptionByDefault is the API's ApplyServerSideEncryptionByDefault.
        rules = [
            {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
            for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        ]
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
    if rules:
        s3.put_bucket_lifecycle_configuration(
            Bucket=name,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": rule["Id"],
                        "Status": rule["Status"],
                        "Filter": {"Prefix": ""},
                        "Expiration": {"Days": int(stack.resolve(rule["ExpirationInDays"]))},
                    }
                    for rule in rules
                ]
            },
        )
