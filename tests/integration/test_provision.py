"""The local stack's resources are the template's: what devstack.provision builds on moto."""

from __future__ import annotations

from callcore.bootstrap import AwsClients
from devstack.template import load_template, resources_of_type
from tests.conftest import MotoStack


def test_each_table_keeps_the_time_to_live_attribute_the_template_gives_it(
    moto_stack: MotoStack, aws_clients: AwsClients
) -> None:
    # moto does not expire items (devstack.ttl does), but it must know the attribute: the
    # usage meter prices a table's expiring items by it, as DescribeTimeToLive reports it.
    tables = resources_of_type(load_template(), "AWS::DynamoDB::Table")
    with_ttl = {name: res for name, res in tables.items() if "TimeToLiveSpecification" in res["Properties"]}
    assert with_ttl, "the template expires packets by TTL"
    for name, res in tables.items():
        described = aws_clients.dynamodb.describe_time_to_live(TableName=moto_stack.stack.tables[name])
        status = described["TimeToLiveDescription"]
        if name in with_ttl:
            expected = res["Properties"]["TimeToLiveSpecification"]["AttributeName"]
            assert status == {"TimeToLiveStatus": "ENABLED", "AttributeName": expected}
        else:
            assert status["TimeToLiveStatus"] == "DISABLED"
