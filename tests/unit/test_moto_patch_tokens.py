"""TransactWriteItems honours ClientRequestToken with the patches, as DynamoDB does.

https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html#DDB-TransactWriteItems-request-ClientRequestToken
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from devstack import moto_server

ENDPOINT = "https://dynamodb.us-east-1.amazonaws.com"  # not the local server the environment names
KEY = {"call_id": {"S": "c1"}}


def _client() -> Any:
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_table(
        TableName="calls",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "call_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "call_id", "KeyType": "HASH"}],
    )
    return client


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with moto_server.patches_applied(), mock_aws():
        yield _client()


def add(n: int) -> list[dict[str, Any]]:
    return [
        {
            "Update": {
                "TableName": "calls",
                "Key": KEY,
                "UpdateExpression": "ADD n :n",
                "ExpressionAttributeValues": {":n": {"N": str(n)}},
            }
        }
    ]


def counted(client: Any) -> str:
    return str(client.get_item(TableName="calls", Key=KEY, ConsistentRead=True)["Item"]["n"]["N"])


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def test_moto_alone_runs_a_retried_transaction_twice() -> None:
    with mock_aws():
        client = _client()
        client.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
        client.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
        assert counted(client) == "2"


def test_a_token_that_committed_answers_success_again_without_writing(dynamodb: Any) -> None:
    first = dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
    again = dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
    assert without_metadata(again) == without_metadata(first)
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert counted(dynamodb) == "1"
    dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="another")
    assert counted(dynamodb) == "2"


def test_a_token_used_with_other_parameters_is_refused(dynamodb: Any) -> None:
    bodies: list[bytes] = []
    dynamodb.meta.events.register(
        "after-call.dynamodb.TransactWriteItems", lambda http_response, **_: bodies.append(http_response.content)
    )
    dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(TransactItems=add(5), ClientRequestToken="retry")
    assert refused.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert b'"__type": "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException"' in bodies[-1]
    assert counted(dynamodb) == "1"
    # Other parameters include more than the items: ReturnConsumedCapacity is one.
    with pytest.raises(ClientError, match="IdempotentParameterMismatch"):
        dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="retry", ReturnConsumedCapacity="TOTAL")


def test_a_token_whose_transaction_was_cancelled_runs_again(dynamodb: Any) -> None:
    new_call = [
        {
            "Put": {
                "TableName": "calls",
                "Item": {**KEY, "n": {"N": "10"}},
                "ConditionExpression": "attribute_not_exists(call_id)",
            }
        }
    ]
    dynamodb.put_item(TableName="calls", Item={**KEY, "n": {"N": "0"}})
    with pytest.raises(ClientError, match="TransactionCanceledException"):
        dynamodb.transact_write_items(TransactItems=new_call, ClientRequestToken="retry")
    # Same token, other parameters, after a cancellation: still the same token.
    with pytest.raises(ClientError, match="IdempotentParameterMismatch"):
        dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
    dynamodb.delete_item(TableName="calls", Key=KEY)

    dynamodb.transact_write_items(TransactItems=new_call, ClientRequestToken="retry")
    assert counted(dynamodb) == "10"
    # It committed this time: a third use answers success without writing.
    dynamodb.put_item(TableName="calls", Item={**KEY, "n": {"N": "0"}})
    dynamodb.transact_write_items(TransactItems=new_call, ClientRequestToken="retry")
    assert counted(dynamodb) == "0"


def test_a_request_that_fails_validation_does_not_use_up_its_token(dynamodb: Any) -> None:
    bad = [{"Update": {**add(1)[0]["Update"], "UpdateExpression": "ADD n :undefined"}}]
    with pytest.raises(ClientError, match="ValidationException"):
        dynamodb.transact_write_items(TransactItems=bad, ClientRequestToken="retry")
    dynamodb.transact_write_items(TransactItems=add(1), ClientRequestToken="retry")
    assert counted(dynamodb) == "1"
