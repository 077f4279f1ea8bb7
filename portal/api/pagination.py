"""The API's cursor pages."""
from rest_framework import exceptions
from rest_framework.pagination import CursorPagination


class NewestFirst(CursorPagination):
    """Stable cursor pages: newest first, by id. A cursor the hub did not hand out is a 404 (DRF's "Invalid
    cursor"), never a query with a position that is not an id."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                int(cursor.position)
            except (TypeError, ValueError):
                raise exceptions.NotFound(self.invalid_cursor_message) from None
        return cursor


class OldestFirst(NewestFirst):
    ordering = "id"
