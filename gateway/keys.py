"""Every aiohttp AppKey and RequestKey, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.services import Services
from gateway.tokens import Claims

services_key = web.AppKey("services", Services)

request_id_key = web.RequestKey("request_id", str)
claims_key = web.RequestKey("claims", Claims)
