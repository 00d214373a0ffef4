/* SPDX-License-Identifier: MIT */
#include "common/layout.h"

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

uint64_t layout_regions(const struct layout_run *runs, uint32_t n, uint64_t *ret_region)
{
	uint64_t cursor = 0;
	for (uint32_t j = 0; j < n; j++) {
		const struct layout_run *ru = &runs[j];
		if (ru->solo) {
			cursor = align_up(cursor, LAYOUT_TENSOR_ALIGN);
			ret_region[j] = cursor;
			cursor += ru->olen;
			continue;
		}
		uint64_t head = ru->file_off % LAYOUT_PAGE;
		uint64_t span = align_up(head + ru->len, LAYOUT_PAGE);
		cursor = align_up(cursor, LAYOUT_PAGE);
		ret_region[j] = cursor;
		cursor += span ? span : LAYOUT_PAGE;
	}
	return cursor ? align_up(cursor, LAYOUT_PAGE) : LAYOUT_PAGE;
}
