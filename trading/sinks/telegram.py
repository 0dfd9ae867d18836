"""Telegram, through a bot: POST {chat_id, text} to <base>/bot<token>/sendMessage.

``TELEGRAM_API_BASE`` is https://api.telegram.org unless a test or a
self-hosted Bot API server says otherwise. The bot token is the secret.
"""

from __future__ import annotations

from django.conf import settings

from trading.sinks import AlertMessage, DeliveryError, Sink


class TelegramSink(Sink):
    name = "telegram"

    def configured(self) -> bool:
        return bool(settings.TELEGRAM_BOT_TOKEN and settings.TELEGRAM_CHAT_ID)

    def secrets(self) -> list[str]:
        token = settings.TELEGRAM_BOT_TOKEN
        return [token] if token else []

    def send(self, message: AlertMessage) -> None:
        url = f"{settings.TELEGRAM_API_BASE.rstrip('/')}/bot{settings.TELEGRAM_BOT_TOKEN}/sendMessage"
        response = self.post_json(url, {"chat_id": settings.TELEGRAM_CHAT_ID, "text": message.text()})
        # The Bot API answers 200 with {"ok": false} for some refusals.
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("ok") is False:
            raise DeliveryError("Telegram answered ok=false", retry=False)
