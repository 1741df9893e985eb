#!/usr/bin/env python3
"""Validate rendered AWS CLI inputs with the AWS CLI's own machinery.

Usage: aws_validate.py SERVICE:OPERATION=FILE ... | iam-policy=FILE ...

For SERVICE:OPERATION (e.g. ec2:CreateLaunchTemplate) the file must be exactly what
`aws SERVICE OPERATION --cli-input-json file://FILE` accepts: it is checked with
botocore's ParamValidator against the service model the AWS CLI ships (names, types,
required members, ranges), and, because ParamValidator does not check them, every enum
value is checked against the same model. For iam-policy the file is checked with moto's
IAM policy document validator (the one moto's CreatePolicy runs).

Prints one line per problem and exits 1 if there is any; exits 0 and prints `ok N` else.
"""
import json
import sys

import botocore.session
from botocore.validate import ParamValidator


def enum_errors(shape, value, path):
    errs = []
    if shape is None:
        return errs
    t = shape.type_name
    if t == "structure" and isinstance(value, dict):
        for k, v in value.items():
            if k in shape.members:
                errs += enum_errors(shape.members[k], v, f"{path}.{k}")
    elif t == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            errs += enum_errors(shape.member, v, f"{path}[{i}]")
    elif t == "map" and isinstance(value, dict):
        for k, v in value.items():
            errs += enum_errors(shape.value, v, f"{path}.{k}")
    elif t == "string" and getattr(shape, "enum", None):
        if value not in shape.enum:
            errs.append(f"{path}: {value!r} is not one of {sorted(shape.enum)}")
    return errs


def main(argv):
    session = botocore.session.get_session()
    problems, checked = [], 0
    for arg in argv:
        what, _, path = arg.partition("=")
        try:
            with open(path) as f:
                doc = json.load(f)
        except Exception as e:  # noqa: BLE001 - report any unreadable file
            problems.append(f"{path}: cannot read JSON: {e}")
            continue
        if what == "iam-policy":
            from moto.iam.policy_validation import IAMPolicyDocumentValidator

            try:
                IAMPolicyDocumentValidator(json.dumps(doc)).validate()
            except Exception as e:  # noqa: BLE001 - moto raises its own error types
                problems.append(f"{path}: invalid IAM policy: {getattr(e, 'message', e)}")
            checked += 1
            continue
        service, _, op = what.partition(":")
        model = session.get_service_model(service)
        shape = model.operation_model(op).input_shape
        report = ParamValidator().validate(doc, shape)
        if report.has_errors():
            problems.append(f"{path}: {service} {op}: {report.generate_report()}")
        problems += [f"{path}: {e}" for e in enum_errors(shape, doc, op)]
        checked += 1
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"ok {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
