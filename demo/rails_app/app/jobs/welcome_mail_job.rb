# frozen_string_literal: true

class WelcomeMailJob < ApplicationJob
  queue_as :mailers

  def perform(user_id)
    record("user" => user_id)
  end
end
