# frozen_string_literal: true

# Enqueued in bulk (perform_all_later: one round trip for all rows).
class ImportRowJob < ApplicationJob
  def perform(row)
    record("row" => row)
  end
end
