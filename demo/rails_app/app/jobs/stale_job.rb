# frozen_string_literal: true

# discard_on: dropped on this error, neither retried nor dead.
class StaleJob < ApplicationJob
  class Gone < StandardError; end
  discard_on Gone

  def perform(id)
    record("id" => id)
    raise Gone, "record #{id} no longer exists"
  end
end
